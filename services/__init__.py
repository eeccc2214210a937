"""FashionChameleon services (one package per service) and the ``chameleon`` CLI.

Importing it does nothing: each process caps its own thread pools where it starts
(``runtime.service.service_main`` for a service, ``services.cli.main.main`` for the CLI)."""
