"""Command line of the benchmark runner: ``python -m benchmarks`` or ``python benchmarks/run.py``.

Imports every ``benchmarks/bench_*.py`` module (each registers its benchmarks), runs the
selected benchmarks in registration order, prints one table and writes the results as JSON.
Exit status: 0, or 1 if a benchmark raised (ERROR); with ``--strict`` also 1 on any FAIL.
"""

from __future__ import annotations

import argparse
import importlib
import os
import pkgutil
import sys
import time
from pathlib import Path

if __package__ in (None, ""):  # run as a script: make the package importable
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks import _runner


def discover() -> list[tuple[str, str]]:
    """Import every bench_* module; return (module, error) for those that failed to import."""
    import benchmarks

    failures = []
    for info in sorted(pkgutil.iter_modules(benchmarks.__path__), key=lambda m: m.name):
        if not info.name.startswith("bench_"):
            continue
        name = f"benchmarks.{info.name}"
        try:
            importlib.import_module(name)
        except Exception as err:  # noqa: BLE001 - a broken module must not hide the others
            failures.append((name, f"{type(err).__name__}: {err}"))
    return failures


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks",
        description="Run the butler benchmarks, print a table and write the results as JSON. "
                    "Benchmarks measure against targets; they are not tests.",
    )
    parser.add_argument("--only", action="append", metavar="PATTERN",
                        help="run only benchmarks whose name matches (glob if it has *?[, else substring); "
                             "repeat or comma-separate for several")
    parser.add_argument("--quick", action="store_true",
                        help="smaller sizes and fewer repetitions (CI smoke run, same code paths, < 60 s)")
    parser.add_argument("--list", action="store_true", help="list the benchmarks and exit")
    parser.add_argument("--json", metavar="PATH", default=str(_runner.DEFAULT_OUTPUT),
                        help="where to write the results (default: .bench/results.json)")
    parser.add_argument("--cache-dir", metavar="DIR", default=str(_runner.PROJECT_ROOT / ".bench"),
                        help="where large fixtures (the 1M-dataset registry) are cached between runs")
    parser.add_argument("--daf-python", metavar="PYTHON",
                        help="interpreter with lsst-daf-butler for the peers.* benchmarks (sets "
                             "BUTLER_BENCH_DAF_PYTHON; default: that variable, else .venv-daf/bin/python if it "
                             "exists, else this interpreter); see docs/benchmarks.md")
    parser.add_argument("--strict", action="store_true", help="exit with status 1 if any target is missed")
    parser.add_argument("-v", "--verbose", action="store_true", help="print notes under the table")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    os.environ.setdefault("BUTLER_USER", "bench")
    if args.daf_python:
        os.environ["BUTLER_BENCH_DAF_PYTHON"] = args.daf_python
    failures = discover()
    patterns = [p.strip() for item in (args.only or []) for p in item.split(",") if p.strip()] or None
    selected = _runner.select(patterns)
    if args.list:
        for b in selected:
            target = "-" if b.target is None else ("<= " if b.better == "lower" else ">= ") + f"{b.target:g} {b.unit}"
            print(f"{b.name:34s} {target:22s} {b.description}")
        for name, err in failures:
            print(f"{name}: cannot import: {err}")
        return 0
    if not selected:
        print(f"no benchmark matches {patterns}; use --list", file=sys.stderr)
        return 2
    started = time.time()
    env = _runner.environment()
    ctx = _runner.Context(quick=args.quick, cache_dir=Path(args.cache_dir), verbose=args.verbose)
    outcomes: list[_runner.Outcome] = []
    for name, err in failures:
        outcomes.append(_runner.Outcome(name, "", None, "lower", "ERROR", error=f"cannot import: {err}"))
    out_path = Path(args.json)
    mode = "quick" if args.quick else "full"
    print(f"running {len(selected)} benchmark(s), {mode} mode", file=sys.stderr, flush=True)
    try:
        for bench in selected:
            print(f"- {bench.name}", file=sys.stderr, flush=True)
            outcome = _runner.run_one(bench, ctx)
            if outcome.status == "ERROR":
                print(f"  !! {outcome.error}", file=sys.stderr, flush=True)
                if args.verbose:
                    print(outcome.extra.get("traceback", ""), file=sys.stderr)
            outcomes.append(outcome)
            _runner.write_json(out_path, outcomes, quick=args.quick, patterns=patterns, started=started, env=env)
    finally:
        ctx.close()
    print()
    print(_runner.format_table(outcomes))
    summary = {s: sum(1 for o in outcomes if o.status == s) for s in ("PASS", "FAIL", "INFO", "ERROR")}
    print()
    print(f"{summary['PASS']} passed, {summary['FAIL']} failed, {summary['INFO']} informational, "
          f"{summary['ERROR']} errors in {time.time() - started:.1f} s ({mode}); results in {out_path}")
    if args.verbose:
        print()
        for o in outcomes:
            if o.notes or o.error:
                print(f"{o.name}: {o.error or o.notes}")
    errors = [o for o in outcomes if o.status == "ERROR"]
    for o in errors:
        print(f"ERROR {o.name}: {o.error}", file=sys.stderr)
    if errors:
        return 1
    if args.strict and summary["FAIL"]:
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
