"""Benchmark machinery behind ``salip benchmark`` and ``benchmarks/run.py``.

Modules: ``metrics`` (Dice, per-slice Dice, NSD, HD95, bootstrap CIs; pure functions),
``datasets`` (dataset kinds that list cases and load their reference masks) and
``baselines`` (per-slice SAM baselines: unprompted, ground-truth boxes, everything oracle).
"""
