"""scitq: a distributed task queue for scientific computing.

The package is both the `scitq.pyz` appliance and an importable library
(`from scitq_app.client import Server`).
"""
__version__ = "2.0.0a1"
