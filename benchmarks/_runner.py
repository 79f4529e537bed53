"""The benchmark machinery: registration, timing helpers, the results table and JSON.

A benchmark is a function taking a `Context` and returning a `Result`; it is registered with
the `benchmark` decorator, which carries its name, target, unit and direction (whether lower or
higher is better)::

    @benchmark("core.put", target=1.0, unit="ms", better="lower", description="...")
    def bench_put(ctx: Context) -> Result:
        samples = measure(lambda i: butler.put(...), n=ctx.size(400, 100), warmup=20)
        return Result.from_samples(samples, "ms", baseline=measure(raw_write, ...))

Modules named ``benchmarks/bench_*.py`` are imported by the runner; importing one registers
its benchmarks. Benchmarks measure; they never assert on timings (a benchmark that cannot run
is reported as ERROR, a missed target as FAIL).
"""

from __future__ import annotations

import contextlib
import fnmatch
import json
import math
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
import traceback
from collections.abc import Callable, Iterable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

__all__ = [
    "BENCHMARKS",
    "PROJECT_ROOT",
    "Benchmark",
    "Context",
    "Result",
    "benchmark",
    "informational",
    "measure",
    "percentile",
    "rate_result",
    "run_python",
    "select",
]

PROJECT_ROOT = Path(__file__).resolve().parent.parent
DEFAULT_OUTPUT = PROJECT_ROOT / ".bench" / "results.json"

_UNIT_FROM_NS = {"ns": 1.0, "us": 1e3, "µs": 1e3, "ms": 1e6, "s": 1e9}


# -- registration ----------------------------------------------------------------------------
@dataclass(frozen=True)
class Benchmark:
    name: str
    func: Callable[[Context], Result]
    unit: str
    target: float | None = None
    better: str = "lower"  # "lower": value <= target passes; "higher": value >= target passes
    description: str = ""
    module: str = ""

    def passes(self, value: float) -> bool | None:
        if self.target is None or value is None or math.isnan(value):
            return None
        return value <= self.target if self.better == "lower" else value >= self.target


BENCHMARKS: dict[str, Benchmark] = {}


def benchmark(name: str, *, unit: str, target: float | None = None, better: str = "lower",
              description: str = "") -> Callable[[Callable[[Context], Result]], Callable[[Context], Result]]:
    """Register ``func(ctx) -> Result`` as the benchmark ``name`` (names are unique)."""
    if better not in ("lower", "higher"):
        raise ValueError(f"better must be 'lower' or 'higher', not {better!r}")

    def decorate(func: Callable[[Context], Result]) -> Callable[[Context], Result]:
        if name in BENCHMARKS:
            raise ValueError(f"benchmark {name!r} is registered twice")
        doc = description or ((func.__doc__ or "").strip().splitlines() or [""])[0]
        BENCHMARKS[name] = Benchmark(name, func, unit, target, better, doc, func.__module__)
        return func

    return decorate


def select(patterns: Sequence[str] | None) -> list[Benchmark]:
    """Benchmarks whose name matches any pattern (a glob if it has ``*?[``, else a substring)."""
    if not patterns:
        return list(BENCHMARKS.values())
    out = []
    for bench in BENCHMARKS.values():
        for pattern in patterns:
            if any(ch in pattern for ch in "*?[") and fnmatch.fnmatchcase(bench.name, pattern):
                out.append(bench)
                break
            if pattern in bench.name:
                out.append(bench)
                break
    return out


# -- results ---------------------------------------------------------------------------------
def percentile(values: Sequence[float], q: float) -> float:
    """The q-th percentile (0..100) with linear interpolation."""
    data = sorted(values)
    if not data:
        return math.nan
    if len(data) == 1:
        return float(data[0])
    pos = (len(data) - 1) * q / 100.0
    lo = math.floor(pos)
    hi = min(lo + 1, len(data) - 1)
    return float(data[lo] + (data[hi] - data[lo]) * (pos - lo))


@dataclass
class Result:
    """What a benchmark measured: the median figure, its p90 and an optional same-run baseline.

    For lower-is-better figures ``p90`` is the 90th percentile; for higher-is-better figures
    (rates) it is the 10th percentile, i.e. always the unfavourable tail.
    """

    value: float
    p90: float | None = None
    baseline: float | None = None
    baseline_p90: float | None = None
    n: int | None = None
    baseline_label: str = ""
    notes: str = ""
    extra: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def from_samples(cls, samples_ns: Sequence[int], unit: str = "ms", *,
                     baseline_ns: Sequence[int] | None = None, baseline_label: str = "", notes: str = "",
                     extra: dict[str, Any] | None = None) -> Result:
        """Median and p90 of per-call times (nanoseconds), converted to ``unit``."""
        scale = _UNIT_FROM_NS[unit]
        res = cls(
            value=percentile(samples_ns, 50) / scale,
            p90=percentile(samples_ns, 90) / scale,
            n=len(samples_ns),
            baseline_label=baseline_label,
            notes=notes,
            extra=dict(extra or {}),
        )
        if baseline_ns:
            res.baseline = percentile(baseline_ns, 50) / scale
            res.baseline_p90 = percentile(baseline_ns, 90) / scale
        return res


def informational(reason: str) -> Result:
    """A benchmark that cannot measure here for a reason that is no fault (an optional peer package is
    not installed): reported as INFO with no figure and ``reason`` in the notes, never as ERROR."""
    return Result(value=math.nan, notes=f"informational: {reason}")


def rate_result(count: int, seconds: Sequence[float], *, baseline_seconds: Sequence[float] | None = None,
                baseline_label: str = "", notes: str = "", extra: dict[str, Any] | None = None) -> Result:
    """Items per second over repeated runs of ``count`` items: median and 10th-percentile rate."""
    rates = [count / s for s in seconds]
    res = Result(value=percentile(rates, 50), p90=percentile(rates, 10), n=len(rates), notes=notes,
                 baseline_label=baseline_label,
                 extra={"count_per_run": count, "seconds": list(seconds), **(extra or {})})
    if baseline_seconds:
        base = [count / s for s in baseline_seconds]
        res.baseline, res.baseline_p90 = percentile(base, 50), percentile(base, 10)
    return res


# -- timing ----------------------------------------------------------------------------------
def measure(func: Callable[[int], Any], n: int, *, warmup: int = 5) -> list[int]:
    """Call ``func(i)`` ``warmup`` times untimed, then ``n`` times; return each call's time in ns.

    ``i`` runs over ``0 .. warmup + n - 1`` so a call can pick a fresh data ID each time.
    Each call is timed on its own with ``time.perf_counter_ns`` (the timer costs < 0.1 us).
    """
    clock = time.perf_counter_ns
    for i in range(warmup):
        func(i)
    samples = []
    for i in range(warmup, warmup + n):
        t0 = clock()
        func(i)
        samples.append(clock() - t0)
    return samples


def run_python(code: str, *, env: dict[str, str] | None = None, args: Sequence[str] = (),
               timeout: float = 120.0) -> dict[str, Any]:
    """Run ``code`` in a fresh interpreter; it must print one JSON object as its last line."""
    full_env = dict(os.environ)
    full_env.setdefault("BUTLER_USER", "bench")
    full_env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(PROJECT_ROOT), full_env.get("PYTHONPATH", "")]))
    if env:
        full_env.update(env)
    proc = subprocess.run([sys.executable, *args, "-c", code], capture_output=True, text=True, check=False,
                          env=full_env, timeout=timeout, cwd=str(PROJECT_ROOT))
    if proc.returncode != 0:
        raise RuntimeError(f"subprocess failed ({proc.returncode}):\n{proc.stderr.strip()[-2000:]}")
    lines = [ln for ln in proc.stdout.strip().splitlines() if ln.strip()]
    if not lines:
        raise RuntimeError(f"subprocess printed nothing; stderr:\n{proc.stderr.strip()[-2000:]}")
    out = json.loads(lines[-1])
    if proc.stderr:
        out.setdefault("_stderr", proc.stderr)
    return out


# -- context ---------------------------------------------------------------------------------
class Context:
    """What a benchmark gets: the mode, a scratch directory, a cache directory and fixtures."""

    def __init__(self, *, quick: bool, cache_dir: Path, verbose: bool = False):
        self.quick = quick
        self.verbose = verbose
        self.cache_dir = cache_dir
        self.tmpdir = tempfile.mkdtemp(prefix="butler-bench-")
        self._fixtures: dict[str, Any] = {}
        self._exits = contextlib.ExitStack()

    def size(self, full: int, quick: int) -> int:
        """``quick`` in a smoke run, ``full`` otherwise (same code paths, smaller numbers)."""
        return quick if self.quick else full

    def fixture(self, key: str, factory: Callable[[Context], Any]) -> Any:
        """Build a fixture once per run and share it between benchmarks."""
        if key not in self._fixtures:
            self._fixtures[key] = factory(self)
        return self._fixtures[key]

    def scratch(self, name: str) -> str:
        path = os.path.join(self.tmpdir, name)
        os.makedirs(path, exist_ok=True)
        return path

    def log(self, message: str) -> None:
        print(f"  .. {message}", file=sys.stderr, flush=True)

    def enter(self, manager: contextlib.AbstractContextManager[Any]) -> Any:
        """Enter a context manager (a server a fixture started) that `close` exits at the end of the run."""
        return self._exits.enter_context(manager)

    def close(self) -> None:
        self._exits.close()
        shutil.rmtree(self.tmpdir, ignore_errors=True)


# -- running ---------------------------------------------------------------------------------
@dataclass
class Outcome:
    name: str
    unit: str
    target: float | None
    better: str
    status: str  # PASS, FAIL, INFO (no target), ERROR
    value: float | None = None
    p90: float | None = None
    baseline: float | None = None
    baseline_p90: float | None = None
    ratio: float | None = None  # value / baseline
    n: int | None = None
    seconds: float = 0.0
    description: str = ""
    baseline_label: str = ""
    notes: str = ""
    error: str = ""
    extra: dict[str, Any] = field(default_factory=dict)


def run_one(bench: Benchmark, ctx: Context) -> Outcome:
    t0 = time.perf_counter()
    out = Outcome(bench.name, bench.unit, bench.target, bench.better, "ERROR", description=bench.description)
    try:
        res = bench.func(ctx)
    except Exception as err:  # noqa: BLE001 - report and carry on with the next benchmark
        out.error = f"{type(err).__name__}: {err}"
        out.extra["traceback"] = traceback.format_exc()
        out.seconds = time.perf_counter() - t0
        return out
    out.seconds = time.perf_counter() - t0
    out.value = None if math.isnan(res.value) else res.value  # NaN: nothing measured (see `informational`)
    out.p90, out.n = res.p90, res.n
    out.baseline, out.baseline_p90, out.baseline_label = res.baseline, res.baseline_p90, res.baseline_label
    out.notes, out.extra = res.notes, res.extra
    if res.baseline:
        out.ratio = res.value / res.baseline
    ok = bench.passes(res.value)
    out.status = "INFO" if ok is None else ("PASS" if ok else "FAIL")
    return out


def _fmt(value: float | None, unit: str) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "-"
    if unit.endswith("/s"):
        return f"{value:,.0f} {unit}"
    if unit in ("B", "modules", "count"):
        return f"{value:,.0f} {unit}"
    if unit == "x":
        return f"{value:.2f}x"
    if value >= 100:
        return f"{value:,.1f} {unit}"
    if value >= 1:
        return f"{value:.3g} {unit}"
    return f"{value:.3f} {unit}"


def _fmt_target(out: Outcome) -> str:
    if out.target is None:
        return "-"
    return ("<= " if out.better == "lower" else ">= ") + _fmt(out.target, out.unit)


def format_table(outcomes: Iterable[Outcome]) -> str:
    headers = ("benchmark", "median", "p90", "target", "baseline", "x base", "status")
    rows = []
    for o in outcomes:
        if o.status == "ERROR":
            rows.append((o.name, "-", "-", _fmt_target(o), "-", "-", "ERROR"))
            continue
        rows.append((
            o.name,
            _fmt(o.value, o.unit),
            _fmt(o.p90, o.unit),
            _fmt_target(o),
            _fmt(o.baseline, o.unit),
            f"{o.ratio:.1f}x" if o.ratio is not None else "-",
            o.status,
        ))
    widths = [max(len(h), *(len(r[i]) for r in rows)) if rows else len(h) for i, h in enumerate(headers)]
    right = {1, 2, 3, 4, 5}

    def line(cells: Sequence[str]) -> str:
        return "  ".join(c.rjust(w) if i in right else c.ljust(w) for i, (c, w) in enumerate(zip(cells, widths)))

    out = [line(headers), line(["-" * w for w in widths])]
    out += [line(r) for r in rows]
    return "\n".join(out)


def _git(*args: str) -> str | None:
    try:
        proc = subprocess.run(["git", *args], capture_output=True, text=True, check=False,
                              cwd=str(PROJECT_ROOT), timeout=10)
    except (OSError, subprocess.TimeoutExpired):
        return None
    return proc.stdout.strip() if proc.returncode == 0 else None


def environment() -> dict[str, Any]:
    import sqlite3

    dirty = _git("status", "--porcelain", "--untracked-files=no")
    return {
        "python": sys.version.split()[0],
        "implementation": platform.python_implementation(),
        "platform": platform.platform(),
        "machine": platform.machine(),
        "cpu_count": os.cpu_count(),
        "sqlite": sqlite3.sqlite_version,
        "git_commit": _git("rev-parse", "HEAD"),
        "git_dirty": bool(dirty) if dirty is not None else None,
    }


def write_json(path: Path, outcomes: Sequence[Outcome], *, quick: bool, patterns: Sequence[str] | None,
               started: float, env: dict[str, Any]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    doc = {
        "started": time.strftime("%Y-%m-%dT%H:%M:%S%z", time.localtime(started)),
        "elapsed_s": round(time.time() - started, 3),
        "quick": quick,
        "only": list(patterns or []),
        "environment": env,
        "summary": {s: sum(1 for o in outcomes if o.status == s) for s in ("PASS", "FAIL", "INFO", "ERROR")},
        "results": [asdict(o) for o in outcomes],
    }
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(doc, indent=2, default=str) + "\n")
    os.replace(tmp, path)
