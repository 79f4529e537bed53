"""Benchmarks of the butler (not timed tests): ``python -m benchmarks`` or ``make bench``.

Each ``bench_*.py`` module registers benchmarks with `benchmarks._runner.benchmark`; the runner
prints one table and writes ``.bench/results.json``. See docs/benchmarks.md.
"""
