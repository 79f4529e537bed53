"""Helpers for testing code that uses the butler: repositories on each registry backend."""

from ._processes import run_concurrently
from ._repos import BACKENDS, RepoFactory, backend_url, make_repo, release_repo, snapshot_repo

__all__ = ["BACKENDS", "RepoFactory", "backend_url", "make_repo", "release_repo", "run_concurrently",
           "snapshot_repo"]
