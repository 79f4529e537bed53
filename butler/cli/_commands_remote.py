"""``butler serve``: serve a repository read-only over HTTP, or over stdin/stdout for ssh (see docs/remote.md)."""

from __future__ import annotations

import click

from ._options import repo_argument

__all__ = ["serve"]


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
