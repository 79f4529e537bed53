"""Helpers for testing code that uses the butler: repositories on each registry backend."""

from ._repos import BACKENDS, RepoFactory, backend_url, make_repo, snapshot_repo

__all__ = ["BACKENDS", "RepoFactory", "backend_url", "make_repo", "snapshot_repo"]
