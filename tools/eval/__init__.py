"""Evaluations behind `chameleon eval NAME`."""
