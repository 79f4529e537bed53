"""``butler serve`` (a repository read-only over HTTP, or over stdin/stdout for ssh), ``butler
prepare-static`` (ready for any static file server) and ``butler cache``; see docs/remote.md."""

from __future__ import annotations

import click

from ._options import repo_argument

__all__ = ["cache", "prepare_static", "serve"]


@click.command()
@repo_argument
@click.option("--host", default="127.0.0.1", show_default=True,
              help="Address to listen on (0.0.0.0 serves every interface: give a token then).")
@click.option("--port", type=click.IntRange(0, 65535), default=8080, show_default=True,
              help="Port to listen on (0 picks a free one; the URL printed names it).")
@click.option("--token-file", type=click.Path(exists=True, dir_okay=False),
              help="File holding a bearer token that every request must carry (Authorization: Bearer ...).")
@click.option("--stdio", is_flag=True,
              help="Answer on stdin/stdout instead of a port (what Butler('ssh://host/REPO') runs; logs go to stderr).")
@click.pass_context
def serve(ctx: click.Context, repo: str, host: str, port: int, token_file: str | None, stdio: bool) -> None:
    """Serve REPO read-only over HTTP: queries, lookups and files (by dataset id, with byte ranges).

    Clients open it with Butler("http://HOST:PORT/"); nothing can be written through it, and only files
    the registry records are served. With --stdio the same protocol runs over stdin/stdout, for clients
    that start it through ssh: Butler("ssh://user@host/data/repo") runs `butler serve --stdio /data/repo`.

    \b
    Example:
      butler serve /data/repo --port 8080 --token-file ~/.butler-token
    """
    if stdio:
        given = [f"--{name.replace('_', '-')}" for name in ("host", "port", "token_file")
                 if ctx.get_parameter_source(name) is not click.core.ParameterSource.DEFAULT]
        if given:
            raise click.UsageError(f"--stdio answers on stdin/stdout, so {' and '.join(given)} do not apply (ssh "
                                   "authenticates the client): drop them, or drop --stdio to serve over HTTP")
        from ..remote._stdio import serve_stdio_process

        serve_stdio_process(repo)
        return
    from ..remote._server import serve as run_server

    token = None
    if token_file is not None:
        with open(token_file) as stream:
            token = stream.read().strip()
        if not token:
            raise click.BadParameter(f"{token_file} is empty: put the token on its first line", param_hint="--token-file")
    run_server(repo, host=host, port=port, token=token)


@click.command("prepare-static")
@repo_argument
@click.option("--compact", is_flag=True, help="VACUUM the registry first, so remote reads need fewer requests.")
def prepare_static(repo: str, compact: bool) -> None:
    """Make REPO ready to be served as static files (any HTTP file server): empty the registry's
    write-ahead log into its file (and with --compact, rewrite it contiguously).

    Run it after the last write, before copying or serving the directory. Clients then open
    Butler("https://host/path/to/repo").

    \b
    Example:
      butler prepare-static /data/repo --compact
    """
    from ..remote._static import prepare_static_hosting

    report = prepare_static_hosting(repo, compact=compact)
    click.echo(f"{report.registry}: {report.size:,} bytes, {report.log_bytes:,} bytes of log emptied; ready to serve")


_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 7 * 86400}


def _duration_ns(text: str) -> int:
    """``30d``, ``12h``, ``90m``, ``2w`` or ``45s`` in nanoseconds."""
    number, unit = text[:-1], text[-1:].lower()
    if unit not in _UNITS or not number.isdigit():
        raise click.BadParameter(f"{text!r} is not a duration such as 30d, 12h, 90m, 2w or 45s", param_hint="--older-than")
    return int(number) * _UNITS[unit] * 1_000_000_000


@click.command("cache")
@repo_argument
@click.argument("action", type=click.Choice(["list", "prune"]))
@click.option("--older-than", default=None, metavar="DURATION",
              help="With prune: only datasets fetched longer ago than this (30d, 12h, 90m, 2w).")
@click.option("--yes", is_flag=True, help="With prune: do not ask for confirmation.")
def cache(repo: str, action: str, older_than: str | None, yes: bool) -> None:
    """List or prune the datasets REPO holds as cached copies of its upstream's (docs/remote.md).

    list prints each cached run with its datasets and bytes; prune removes cached datasets (all, or
    those fetched before --older-than) and the cached runs left empty. Your own runs are never touched.

    \b
    Example:
      butler cache /data/mine list
      butler cache /data/mine prune --older-than 30d --yes
    """
    from .._butler import Butler
    from .._upstream import cache_report, prune_cache
    from ._output import print_rows

    butler = Butler(repo, writeable=action == "prune")
    rows = cache_report(butler)
    if action == "list":
        print_rows(rows, ["run", "datasets", "bytes"], "table", empty="no cached datasets")
        return
    cutoff = None if older_than is None else _duration_ns(older_than)
    if not rows:
        click.echo("no cached datasets")
        return
    if not yes:
        what = "every cached dataset" if cutoff is None else f"cached datasets fetched more than {older_than} ago"
        click.confirm(f"Remove {what} (of {sum(r['datasets'] for r in rows)} in {len(rows)} runs)?", abort=True)
    removed, runs = prune_cache(butler, older_than_ns=cutoff)
    click.echo(f"removed {removed} cached dataset(s) and {len(runs)} run(s)")
