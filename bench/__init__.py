"""Benchmarks: `python -m bench` (all sections), `python -m bench.data|models|agents ...` (one each).

Only bench/ and tests/ import this package; the library (utils/, envs/, agents/) never does.
"""
