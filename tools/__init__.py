"""Offline tools: training, evaluation, benchmarks and inspection.

They sit outside ``services/`` so that a serving worker imports only what serves; the ``chameleon``
CLI dispatches to them. Tools may import any service's pure modules; no service imports a tool.
"""
