"""Tools for testing sagaflow flows: contract suites, fakes, strategies.

Importing `sagaflow` never imports this package (nor pytest or hypothesis).
"""
