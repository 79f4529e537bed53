"""Create throw-away repositories on SQLite, PostgreSQL or MySQL, and snapshot them.

Server backends are chosen by environment variables (``BUTLER_TEST_POSTGRES_URL``,
``BUTLER_TEST_MYSQL_URL``); each repository gets its own schema/database namespace, so tests
never see each other's tables, and the namespace is dropped afterwards.
"""

from __future__ import annotations

import hashlib
import os
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .._butler import Butler

BACKENDS = ("sqlite", "postgresql", "mysql")
_ENV = {"postgresql": "BUTLER_TEST_POSTGRES_URL", "mysql": "BUTLER_TEST_MYSQL_URL"}


SIMCAM_VISITS = (
    {"instrument": "SimCam", "id": 12, "physical_filter": "SimCam-r", "day_obs": 20261124,
     "exposure_time": 30.0, "begin": "2026-11-24T03:00:00", "end": "2026-11-24T03:00:30"},
    {"instrument": "SimCam", "id": 14, "physical_filter": "SimCam-g", "day_obs": 20261124,
     "exposure_time": 5.0, "begin": "2026-11-24T04:00:00", "end": "2026-11-24T04:00:05"},
)
"""The two visits of the small SimCam test repositories (r band, g band, one night)."""


def backend_url(backend: str) -> str | None:
    """The server URL for a backend (None for SQLite or when the variable is unset)."""
    if backend == "sqlite":
        return None
    return os.environ.get(_ENV[backend]) or None


def make_repo(root: str, backend: str = "sqlite", **kwargs: Any) -> Butler:
    """Create a repository at ``root`` on ``backend`` and return a writeable Butler."""
    from .. import Butler

    if backend == "sqlite":
        return Butler.create(root, **kwargs)
    url = backend_url(backend)
    if url is None:
        raise RuntimeError(f"set {_ENV[backend]} to test the {backend} backend")
    namespace = "butler_test_" + uuid.uuid4().hex[:12]
    return Butler.create(root, db=url, namespace=namespace, **kwargs)


@dataclass
class RepoFactory:
    """Makes repositories below a temporary directory and drops their namespaces at the end."""

    base: str
    backend: str
    created: list[Butler] = field(default_factory=list)

    def __call__(self, name: str = "repo", **kwargs: Any) -> Butler:
        butler = make_repo(os.path.join(self.base, name), self.backend, **kwargs)
        self.created.append(butler)
        return butler

    def cleanup(self) -> None:
        for butler in self.created:
            db = butler.registry.db
            if db.namespace is not None:
                db.drop_namespace()
            from .._butler import _REGISTRIES

            _REGISTRIES.pop((db.url, db.namespace), None)


def release_repo(butler: Any) -> None:
    """Make this process forget a repository's registry and close its connections (a SQLite WAL
    is checkpointed into the main file first), so the next ``Butler(root)`` opens it from disk as
    a new process would: for tests that damage or remove registry files."""
    from .._butler import _REGISTRIES
    from ..registry._database import close_engine

    db = butler.registry.db
    db.checkpoint()
    _REGISTRIES.pop((db.url, db.namespace), None)
    close_engine(db.url)


def snapshot_repo(butler: Any) -> tuple[dict[str, list[tuple[str, ...]]], dict[str, str]]:
    """Every registry row and every file (path -> content digest) of a repository.

    Tests compare snapshots before and after a failing call to prove it left the repository
    exactly as it was.
    """
    from ..registry._inspection import table_rows

    tables: dict[str, list[tuple[str, ...]]] = dict(table_rows(butler.registry))
    files: dict[str, str] = {}
    for dirpath, dirnames, filenames in os.walk(butler.root):
        if dirpath == butler.root and ".locks" in dirnames:
            dirnames.remove(".locks")  # run locks (butler._run_lock) are process state, not content
        for fn in filenames:
            if fn.startswith("butler.sqlite3"):
                continue
            full = os.path.join(dirpath, fn)
            with open(full, "rb") as f:
                files[os.path.relpath(full, butler.root)] = hashlib.blake2b(f.read(), digest_size=16).hexdigest()
    return tables, files


def iter_backends() -> Iterator[str]:
    yield "sqlite"
    for b in ("postgresql", "mysql"):
        if backend_url(b):
            yield b
