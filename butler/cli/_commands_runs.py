"""``butler chown-run``: hand a RUN collection over to another user (see docs/concepts.md, "Runs and ownership")."""

from __future__ import annotations

import click

from ._options import repo_argument

__all__ = ["chown_run"]


@click.command("chown-run")
@repo_argument
@click.argument("run")
@click.argument("new_owner")
def chown_run(repo: str, run: str, new_owner: str) -> None:
    """Hand RUN over to NEW_OWNER: from then on only NEW_OWNER writes into it or removes it.

    Only the run's owner may do this. On PostgreSQL and MySQL registries NEW_OWNER is a database
    role (checked to exist when the server lets you read its roles); on SQLite it is an OS account
    name (or the $BUTLER_USER that person uses).

    \b
    Example:
      butler chown-run /data/repo u/alice/coadd bob
    """
    from .._butler import Butler

    butler = Butler(repo, writeable=True)
    old = butler.collection_info(run).owner
    butler.chown_run(run, new_owner)
    click.echo(f"run {run!r} now belongs to {new_owner!r} (was {old!r})")
