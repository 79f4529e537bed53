"""Remote repositories: the read-only server (`butler serve`, over HTTP or ssh stdio) and its client.

``Butler("http://host:8080/")`` or ``Butler("ssh://user@host/data/repo")`` opens a repository through
`open_remote`: queries and lookups are answered by the server, files are fetched by dataset id,
verified against their recorded checksums and kept in a local cache. See docs/remote.md.

Importing this package is cheap (the Butler checks every root it opens against `is_remote_url`);
the client and server modules load on first use.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from ._urls import is_remote_url

if TYPE_CHECKING:
    from ._client import RemoteRepository, open_remote

__all__ = ["RemoteRepository", "is_remote_url", "open_remote"]


def __getattr__(name: str) -> Any:
    if name in ("RemoteRepository", "open_remote"):
        from . import _client

        return getattr(_client, name)
    raise AttributeError(f"module 'butler.remote' has no attribute {name!r}")
