"""Benchmark machinery behind ``salip benchmark`` and ``benchmarks/run.py``.

Modules: ``metrics`` (Dice, per-slice Dice, NSD, HD95, bootstrap CIs; pure functions) and
``datasets`` (dataset kinds that list cases and load their reference masks).
"""
