"""The ``butler`` click group, its error handling and the repository-management commands.

User errors (anything the butler raises as ``ButlerError``, and the ``ValueError``,
``LookupError`` and ``PermissionError`` families) are printed as ``error: <message>`` on stderr
with exit code 2; ``butler --debug ...`` re-raises them with the traceback. Commands import the
butler internals inside their functions so that ``butler --help`` stays fast.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import click

from ._commands_query import (
    query_collections,
    query_data_ids,
    query_dataset_types,
    query_datasets,
    query_dimension_records,
)
from ._options import collections_option, repo_argument

if TYPE_CHECKING:
    from .._butler import Butler

__all__ = ["cli", "main"]

USER_ERRORS: tuple[type[BaseException], ...] = (ValueError, LookupError, PermissionError)
"""Standard exceptions reported as user errors (besides every ``ButlerError``)."""


def _is_user_error(err: BaseException) -> bool:
    from ..errors import ButlerError

    return isinstance(err, (ButlerError, *USER_ERRORS))


def _message(err: BaseException) -> str:
    if isinstance(err, KeyError) and len(err.args) == 1:
        return str(err.args[0])  # str(KeyError) would add quotes
    return str(err) or type(err).__name__


class ButlerGroup(click.Group):
    """A group that reports user errors of its commands as ``error: ...`` with exit code 2.

    Other packages add commands through the ``butler.cli`` entry-point group (orchestration
    adds ``butler run``); they are imported only when their command is invoked.
    """

    def _plugins(self) -> dict[str, Any]:
        from importlib.metadata import entry_points

        return {ep.name: ep for ep in entry_points(group="butler.cli")}

    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted(set(super().list_commands(ctx)) | set(self._plugins()))

    def format_commands(self, ctx: click.Context, formatter: click.HelpFormatter) -> None:
        """List commands without importing plugins (``butler --help`` stays fast)."""
        rows = []
        plugins = self._plugins()
        for name in self.list_commands(ctx):
            if name in plugins:
                rows.append((name, f"Provided by {plugins[name].value.split(':')[0]}; see `butler {name} --help`."))
            else:
                command = super().get_command(ctx, name)
                if command is not None and not command.hidden:
                    rows.append((name, command.get_short_help_str(formatter.width - 6 - len(name))))
        if rows:
            with formatter.section("Commands"):
                formatter.write_dl(rows)

    def get_command(self, ctx: click.Context, name: str) -> click.Command | None:
        command = super().get_command(ctx, name)
        if command is None:
            ep = self._plugins().get(name)
            if ep is not None:
                command = ep.load()
        return command

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except (click.exceptions.Exit, click.exceptions.Abort, click.ClickException):
            raise
        except Exception as err:
            if ctx.params.get("debug") or not _is_user_error(err):
                raise
            click.echo(f"error: {_message(err)}", err=True)
            ctx.exit(2)


@click.group(cls=ButlerGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--debug", is_flag=True, help="Show the full traceback of errors instead of a one-line message.")
def cli(debug: bool) -> None:
    """Create, query, verify and clean butler data repositories.

    Every command takes the repository root directory (REPO) as its first argument.
    Run `butler COMMAND --help` for the options and an example of each command.
    """


def main() -> None:
    """Entry point of the ``butler`` script."""
    cli(prog_name="butler")


# -- repository management -----------------------------------------------------------------
@cli.command()
@repo_argument
@click.option("--db", default=None, metavar="URL",
              help="SQLAlchemy URL of the registry database (default: SQLite file inside REPO), e.g. "
                   "postgresql://host/dbname.")
@click.option("--namespace", default=None, metavar="NS",
              help="Schema (PostgreSQL) or database (MySQL) holding this repository's tables in a shared server.")
def create(repo: str, db: str | None, namespace: str | None) -> None:
    """Create an empty repository at REPO.

    The directory is created if needed; it must not already hold a repository. The registry is
    an SQLite file inside REPO unless --db names a database server.

    \b
    Example:
      butler create /data/repo
      butler create /data/repo --db postgresql://db.example.org/butler --namespace survey
    """
    from .._butler import Butler

    butler = Butler.create(repo, db=db, namespace=namespace)
    click.echo(f"created repository at {butler.root}")


@cli.command("register-instrument")
@repo_argument
@click.argument("instrument", metavar="NAME|YAML")
@click.option("--update", is_flag=True,
              help="Replace the definition of an instrument already registered with a different one.")
def register_instrument(repo: str, instrument: str, update: bool) -> None:
    """Register an instrument (camera) and its detectors and filters in REPO.

    NAME|YAML is a known instrument name (e.g. SimCam), a dotted class path, or the path of a
    camera definition YAML file. Registering the same definition again does nothing; a changed
    definition is refused unless --update is given.

    \b
    Example:
      butler register-instrument /data/repo SimCam
      butler register-instrument /data/repo cameras/mycam.yaml --update
    """
    from .._butler import Butler
    from ..instrument import load_instrument

    inst = load_instrument(instrument)
    Butler(repo, writeable=True).register_instrument(inst, update=update)
    click.echo(f"registered instrument {inst.name}")


@cli.command()
@repo_argument
@collections_option("Only verify the files of datasets in these collections (repeatable; globs and chains "
                    "allowed). Default: every file.")
@click.option("--orphans/--no-orphans", default=None,
              help="Also walk REPO for files the registry does not know (default: when verifying every file).")
def verify(repo: str, collections: Sequence[str], orphans: bool | None) -> None:
    """Recompute the checksum and size of dataset files in REPO and report problems.

    Prints one line per problem and exits with status 1 if there is any; prints "N files
    verified, no problems" and exits 0 otherwise. Problems are: missing, checksum, size (a
    registered file is gone or its bytes changed), leftover (a file an interrupted write, removal
    or move left: `butler cleanup REPO` removes it) and unregistered (a file neither the registry
    nor the journal knows, e.g. put there by hand: never removed automatically).

    \b
    Example:
      butler verify /data/repo
      butler verify /data/repo --collections u/alice/run1
      butler verify /data/repo --collections u/alice/run1 --orphans
    """
    from .._butler import Butler
    from ._output import print_rows

    butler = Butler(repo)
    colls = list(collections) or None
    n_files = _count_files(butler, colls)
    problems = butler.verify(collections=colls, orphans=orphans)
    if problems:
        rows = [{"path": p.path, "problem": p.problem, "detail": p.detail} for p in problems]
        print_rows(rows, ["path", "problem", "detail"], "table")
        click.echo(f"{len(problems)} problem(s) in {n_files} files", err=True)
        if any(p.problem == "leftover" for p in problems):
            click.echo(f"`butler cleanup {repo}` removes the leftovers of interrupted writes", err=True)
        raise click.exceptions.Exit(1)
    click.echo(f"{n_files} files verified, no problems")


@cli.command()
@repo_argument
@click.option("--run", "runs", multiple=True, metavar="RUN",
              help="Only clean up these runs (repeatable). Default: every run with leftovers that you own.")
@click.option("--allow-foreign-run", is_flag=True, help="Also clean up runs owned by somebody else.")
def cleanup(repo: str, runs: Sequence[str], allow_foreign_run: bool) -> None:
    """Remove what interrupted writes left in REPO: the files `butler verify` reports as leftovers.

    Only files that the repository's journal says an interrupted put, ingest, removal or
    execution staged and never registered are removed (never a file any dataset references, never
    a file the journal does not name); a move that committed is finished (its source unlinked).
    Each run is cleaned under its lock; a run in use by an executor or a writer is skipped.
    Exits with status 1 if a run was skipped.

    \b
    Example:
      butler cleanup /data/repo
      butler cleanup /data/repo --run u/alice/coadd
    """
    from .._butler import Butler

    report = Butler(repo, writeable=True).cleanup(list(runs) or None, allow_foreign_run=allow_foreign_run)
    click.echo(report.summary())
    if report.skipped:
        raise click.exceptions.Exit(1)


def _count_files(butler: Butler, collections: Sequence[str] | None) -> int:
    """How many file records ``Butler.verify(collections=...)`` checks (same selection)."""
    registry = butler.registry
    ids = None if collections is None else [c.id for c in registry.collections.resolve(collections)]
    return registry.datasets.count_files(ids)


@cli.command("remove-runs")
@repo_argument
@click.argument("patterns", metavar="GLOB...", nargs=-1, required=True)
@click.option("--yes", "-y", is_flag=True, help="Do not ask for confirmation.")
@click.option("--allow-foreign-run", is_flag=True, help="Also remove runs that belong to somebody else.")
def remove_runs(repo: str, patterns: Sequence[str], yes: bool, allow_foreign_run: bool) -> None:
    """Delete the RUN collections matching GLOB, with their datasets and files.

    Lists the matching runs and how many datasets each holds, then asks for confirmation
    (unless --yes). Exits with status 1 when no run matches. A run that is a child of a
    CHAINED collection must be removed from the chain first; a run that belongs to somebody
    else is refused (nothing is removed) unless --allow-foreign-run.

    \b
    Example:
      butler remove-runs /data/repo 'u/alice/test*'
      butler remove-runs /data/repo u/alice/run1 --yes
    """
    from .._butler import Butler
    from ..registry._collections import CollectionType
    from ._output import print_rows

    butler = Butler(repo, writeable=True)
    runs = butler.registry.collections.query(list(patterns), types=[CollectionType.RUN])
    if not runs:
        click.echo(f"no RUN collection matches {' '.join(repr(p) for p in patterns)}; nothing removed", err=True)
        raise click.exceptions.Exit(1)
    counts = butler.registry.datasets.count_by_run([r.id for r in runs])
    print_rows([{"run": r.name, "datasets": counts.get(r.id, 0)} for r in runs], ["run", "datasets"], "table")
    total = sum(counts.values())
    if not yes:
        click.confirm(f"Remove these {len(runs)} run(s) and their {total} dataset(s)?", abort=True)
    removed = butler.remove_runs([r.name for r in runs], allow_foreign_run=allow_foreign_run)
    click.echo(f"removed {len(removed)} run(s) and {total} dataset(s)")


for _command in (query_datasets, query_data_ids, query_dimension_records, query_collections,
                 query_dataset_types):
    cli.add_command(_command)

from ._commands_calibs import certify_calibrations, query_calibrations

cli.add_command(certify_calibrations)
cli.add_command(query_calibrations)

from ._commands_provenance import query_provenance

cli.add_command(query_provenance)

from ._commands_runs import chown_run

cli.add_command(chown_run)

from ._commands_skymap import define_visits, register_skymap  # (issue 4)

cli.add_command(register_skymap)
cli.add_command(define_visits)

from ._commands_transfer import compare, export, import_bundle, transfer, verify_bundle  # (issue 12)

cli.add_command(export)
cli.add_command(import_bundle)
cli.add_command(transfer)
cli.add_command(compare)
cli.add_command(verify_bundle)

from ._commands_remote import cache, prepare_static, serve  # (issue 13)

cli.add_command(serve)
cli.add_command(cache)
cli.add_command(prepare_static)
