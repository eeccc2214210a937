"""FashionChameleon services (one package per service) and the ``chameleon`` CLI.

Importing this package caps numpy's OpenBLAS pool at one thread unless the environment says
otherwise. Every service already runs in its own process beside the others; OpenBLAS's default (a
thread per core, spinning after each call) turned the warp renderer's small linear algebra into a
second busy core. It must happen before numpy is first imported, hence here: ``python -m
services.<name>.main`` runs this file first.
"""

import os

os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")
