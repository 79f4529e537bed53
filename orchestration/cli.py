"""``butler run``: plan a pipeline over a data query and execute it on Dask.

Loaded through the ``butler.cli`` entry point, so the ``butler`` command does not import
orchestration (or Dask) unless ``run`` is used.
"""

from __future__ import annotations

import re
import shlex
import sys
from collections.abc import Callable, Sequence
from contextlib import ExitStack
from typing import Any

import click

__all__ = ["DASHBOARD_ADDRESS", "dashboard_link", "make_client", "parse_id", "run"]

_TERM = re.compile(r"^(?P<key>[A-Za-z_][A-Za-z0-9_.]*)=(?P<value>.+)$")
_RANGE = re.compile(r"^(-?\d+)\.\.(-?\d+)(?::(\d+))?$")
_INT = re.compile(r"^-?\d+$")


def parse_id(text: str, aliases: dict[str, str] | None = None) -> tuple[str, dict[str, Any]]:
    """Turn ``"tract=9000 patch=44..46 band=g^r"`` into a where-expression with bind values.

    Terms are ``key=value`` separated by spaces; ``a..b`` (optionally ``a..b:step``) is an
    inclusive range and ``x^y`` lists alternatives. Instrument aliases (``ccd``) are accepted.
    Values are bound as parameters, never pasted into the expression.
    """
    aliases = aliases or {}
    terms = []
    bind: dict[str, Any] = {}
    for i, item in enumerate(shlex.split(text)):
        m = _TERM.match(item)
        if m is None:
            raise click.BadParameter(f"{item!r} is not key=value (e.g. visit=12, patch=44..46, band=g^r)",
                                     param_hint="'--id'")
        key = aliases.get(m["key"], m["key"])
        alternatives = m["value"].split("^")
        parts = []
        for j, alt in enumerate(alternatives):
            name = f"id{i}_{j}"
            r = _RANGE.match(alt)
            if r:
                start, stop, step = int(r[1]), int(r[2]), int(r[3] or 1)
                if stop < start or step <= 0:
                    raise click.BadParameter(f"bad range {alt!r} in {item!r}: need start <= stop and step > 0",
                                             param_hint="'--id'")
                bind[name] = list(range(start, stop + 1, step))
                parts.append(f"{key} IN (:{name})")
            else:
                bind[name] = int(alt) if _INT.match(alt) else alt
                parts.append(f"{key} = :{name}")
        terms.append(parts[0] if len(parts) == 1 else "(" + " OR ".join(parts) + ")")
    return " AND ".join(terms), bind


DASHBOARD_ADDRESS = "127.0.0.1:0"


def make_client(spec: str, *, dashboard_address: str = DASHBOARD_ADDRESS) -> Any:
    """A distributed Client for ``local[:N]``, ``threads[:N]``, a scheduler address, ``slurm`` or ``pbs``.

    The dashboard of a cluster started here listens on ``dashboard_address``: by default this
    machine only (a port alone, ``:0``, would bind every interface and show other users' data
    paths and tracebacks to the network), on a free port.
    """
    import os
    from typing import cast

    import distributed

    # distributed's constructors carry no annotations: call them as what they are to this function.
    Client = cast("Callable[..., Any]", distributed.Client)
    LocalCluster = cast("Callable[..., Any]", distributed.LocalCluster)
    name, _, arg = spec.partition(":") if not spec.startswith(("tcp://", "tls://", "ucx://")) else (spec, "", "")
    if name == "local":
        n = int(arg) if arg else min(os.cpu_count() or 1, 8)
        cluster = LocalCluster(n_workers=n, threads_per_worker=1, processes=True, dashboard_address=dashboard_address)
        return Client(cluster)
    if name == "threads":
        n = int(arg) if arg else (os.cpu_count() or 1)
        return Client(processes=False, n_workers=1, threads_per_worker=n, dashboard_address=dashboard_address)
    if name in ("slurm", "pbs"):
        try:
            import dask_jobqueue
        except ImportError:
            raise click.UsageError(f"--cluster {name} needs dask-jobqueue: pip install dask-jobqueue") from None
        cluster_cls = dask_jobqueue.SLURMCluster if name == "slurm" else dask_jobqueue.PBSCluster
        cluster = cluster_cls()
        cluster.scale(int(arg) if arg else 1)
        return Client(cluster)
    if spec.startswith(("tcp://", "tls://", "ucx://")):
        return Client(spec)
    raise click.BadParameter(f"unknown cluster {spec!r}; use local[:N], threads[:N], tcp://host:port, slurm or pbs",
                             param_hint="'--cluster'")


def dashboard_link(client: Any, dashboard_address: str = DASHBOARD_ADDRESS) -> str | None:
    """The dashboard's URL on the host it listens on (Dask names the machine's address in the link of
    an in-process cluster even when the dashboard only listens on 127.0.0.1)."""
    from urllib.parse import urlsplit

    link = getattr(client, "dashboard_link", None)
    if not isinstance(link, str) or not link:
        return None
    host = dashboard_address.rpartition(":")[0].strip("[]")
    if host in ("", "0.0.0.0", "::"):
        return link
    parts = urlsplit(link)
    return parts._replace(netloc=f"{host}:{parts.port}").geturl()


@click.command("run")
@click.argument("repo", type=click.Path(file_okay=False))
@click.argument("pipeline", type=click.Path(dir_okay=False, exists=True))
@click.option("-i", "--input", "inputs", multiple=True, required=True, metavar="COLLECTION",
              help="Input collections, searched in order (repeat or comma-separate).")
@click.option("-o", "--output-run", required=True, metavar="RUN", help="The RUN collection that receives outputs.")
@click.option("--id", "id_text", default="", metavar="TERMS",
              help="Data ID terms: \"tract=9000 patch=44..46 band=g^r\" (ranges a..b, alternatives x^y).")
@click.option("--where", "-w", default="", metavar="EXPR", help="A where-expression (combined with --id by AND).")
@click.option("--config", "-c", "overrides", multiple=True, metavar="LABEL:FIELD=VALUE",
              help="Config override, e.g. calibrate:threshold=5.0 (repeatable).")
@click.option("--tasks", default=None, metavar="LABELS|SUBSET", help="Run only these task labels or this subset.")
@click.option("--cluster", default="local", show_default=True,
              help="local[:N] (LocalCluster of N processes), threads[:N] (in-process, for debugging), "
                   "tcp://scheduler:8786 (an existing cluster), slurm or pbs (dask-jobqueue).")
@click.option("--dashboard-address", default=DASHBOARD_ADDRESS, show_default=True, metavar="HOST:PORT",
              help="Where the dashboard of a local[:N] or threads[:N] cluster listens: this machine only by default; "
                   "e.g. 0.0.0.0:8787 to reach it from other machines.")
@click.option("--retries", default=0, show_default=True, help="Times to retry a failing quantum.")
@click.option("--resume", is_flag=True, help="Finish an existing run: skip quanta whose outputs all exist.")
@click.option("--extend-run", is_flag=True, help="Add to an existing output run (existing outputs are an error).")
@click.option("--clobber-outputs", is_flag=True,
              help="Redo quanta whose outputs exist partially (or fully, without --resume): remove them first.")
@click.option("--skip-existing-in", multiple=True, metavar="COLLECTION",
              help="Skip quanta whose outputs exist in these collections, and use those outputs downstream.")
@click.option("--replace-run", is_flag=True, help="Remove the existing output run (yours) and start it again.")
@click.option("--dry-run", is_flag=True, help="Print the plan (quanta to run and skip, and why) and stop.")
@click.option("--explain", default=None, metavar="TASK[:k=v,...]", help="With --dry-run: explain quanta of a task.")
@click.option("--save-plan", default=None, type=click.Path(dir_okay=False), help="Write the plan (gzip pickle).")
@click.option("--calibs", "calibs", multiple=True, metavar="TYPE=COLLECTION",
              help="Calibration collection of a dataset type, e.g. --calibs flat=SimCam/calib/flats-v2 (repeatable; "
                   "default: <instrument>/calib).")
@click.option("--progress/--no-progress", default=None, help="Progress bar (default: when stderr is a terminal).")
@click.option("--upstream", default=None, metavar="URL|REPO",
              help="Read inputs from this repository (http(s)://, ssh:// or a directory): planned against it, fetched "
                   "verified into REPO before execution; outputs and provenance are written to REPO.")
def run(repo: str, pipeline: str, inputs: Sequence[str], output_run: str, id_text: str, where: str,
        overrides: Sequence[str], tasks: str | None, cluster: str, retries: int, resume: bool, extend_run: bool,
        clobber_outputs: bool, skip_existing_in: Sequence[str], replace_run: bool, dry_run: bool,
        explain: str | None, save_plan: str | None, progress: bool | None, calibs: Sequence[str] = (),
        dashboard_address: str = DASHBOARD_ADDRESS, upstream: str | None = None) -> None:
    """Plan PIPELINE (a YAML file) over REPO and execute it on Dask.

    \b
    Example:
      butler run repo pipelines/coadd.yaml -i SimCam/raw/all -o u/alice/coadd \\
          --id "tract=9000 patch=44..46 band=g^r" --cluster local:2 --retries 2
      butler run ... --resume        # after a crash: only what is missing runs
      butler run ... --dry-run       # per task: quanta to run / skip, and why
      butler run mine pipelines/coadd.yaml --upstream https://host/repo -i HSC/runs/RC2 -o u/me/coadd
    """
    from butler import Butler

    from ._executor import DaskExecutor
    from ._pipeline import Pipeline
    from ._planner import Planner

    collections = [c for item in inputs for c in item.split(",") if c]
    calib_map = {}
    for item in calibs:
        key, sep, value = item.partition("=")
        if not sep or not key or not value:
            raise click.BadParameter(f"{item!r} is not TYPE=COLLECTION", param_hint="'--calibs'")
        calib_map[key.strip()] = value.strip()
    butler = Butler(repo, writeable=True, collections=collections, calibs=calib_map, upstream=upstream)
    pipe = Pipeline.from_yaml(pipeline).apply_overrides(overrides)
    if tasks:
        pipe = pipe.subset(tasks if tasks in pipe.subsets else tasks.split(","))
    aliases = (butler.upstream or butler).reader.data_ids.aliases(None)  # the inputs' instruments
    id_where, bind = parse_id(id_text, aliases) if id_text else ("", {})
    full_where = " AND ".join(f"({w})" for w in (where, id_where) if w)
    with ExitStack() as held:
        if not dry_run:  # plan and execute under the run's lock: no other executor changes what exists
            held.enter_context(butler.lock_run(output_run))
        if replace_run and butler.query_collections(output_run):
            butler.check_run_access(output_run)  # refuse to remove somebody else's run
            if not dry_run:
                butler.remove_runs(output_run)
            else:  # plan as the replacement will run: every quantum, whatever the old run holds
                extend_run, clobber_outputs, resume = True, True, False
        plan = Planner(butler).build(pipe, inputs=collections, output_run=output_run, where=full_where, bind=bind,
                                     extend_run=extend_run, resume=resume, clobber_outputs=clobber_outputs,
                                     skip_existing_in=list(skip_existing_in) or None, calibs=calib_map)
        if save_plan:
            plan.save(save_plan)
        click.echo(plan.summary())
        reruns = plan.reruns()
        if reruns:  # quanta whose outputs exist but whose inputs are not those recorded (provenance)
            click.echo(reruns)
        if dry_run:
            if explain:
                label, _, terms = explain.partition(":")
                pairs = dict(t.split("=", 1) for t in terms.split(",") if t)
                data_id: dict[str, int | str] = {k: int(v) if _INT.match(v) else v for k, v in pairs.items()}
                click.echo(plan.explain(label, data_id))
            return
        resume_cmd = "butler " + " ".join(shlex.quote(a) for a in sys.argv[1:] if a not in ("--replace-run",))
        if "--resume" not in resume_cmd:
            resume_cmd += " --resume"
        with make_client(cluster, dashboard_address=dashboard_address) as client:
            link = dashboard_link(client, dashboard_address)
            if link:
                click.echo(f"dashboard: {link}", err=True)
            executor = DaskExecutor(client, retries=retries, progress=progress, resume_command=resume_cmd)
            report = executor.run(plan, butler)
        click.echo(report.summary())
        if not report.ok:
            sys.exit(1)
