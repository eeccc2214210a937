"""Driving a whole stack from outside, shared by the CLI, the tools and the tests: the supervised
process tree (``stack``), what a client records (``recorder``) and the demo's quality measures.
May import services, ``runtime/`` and ``shared/``; never the CLI or ``tools/``."""
