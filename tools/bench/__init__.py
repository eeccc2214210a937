"""Benchmarks behind `chameleon bench NAME`: each prints one JSON object as its last line."""
