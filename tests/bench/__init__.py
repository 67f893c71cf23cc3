"""The pytest-benchmark suite: GPU benchmarks, CPU guards, and the memory gate's pytest options.

A package, so its conftest and helpers import as bench.* and never shadow tests/conftest.py.
"""
