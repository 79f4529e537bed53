"""``butler serve`` (a repository read-only over HTTP) and ``butler prepare-static`` (ready for any
static file server); see docs/remote.md."""

from __future__ import annotations

import click

from ._options import repo_argument

__all__ = ["prepare_static", "serve"]


@click.command()
@repo_argument
@click.option("--host", default="127.0.0.1", show_default=True,
              help="Address to listen on (0.0.0.0 serves every interface: give a token then).")
@click.option("--port", type=click.IntRange(0, 65535), default=8080, show_default=True,
              help="Port to listen on (0 picks a free one; the URL printed names it).")
@click.option("--token-file", type=click.Path(exists=True, dir_okay=False),
              help="File holding a bearer token that every request must carry (Authorization: Bearer ...).")
def serve(repo: str, host: str, port: int, token_file: str | None) -> None:
    """Serve REPO read-only over HTTP: queries, lookups and files (by dataset id, with byte ranges).

    Clients open it with Butler("http://HOST:PORT/"); nothing can be written through it, and only files
    the registry records are served.

    \b
    Example:
      butler serve /data/repo --port 8080 --token-file ~/.butler-token
    """
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
