"""Helpers for testing code that uses the butler: repositories on each registry backend."""

from ._crash import CrashOutcome, count_crash_points, crash_at, forget_open_repositories, repository_state
from ._processes import run_concurrently
from ._repos import BACKENDS, RepoFactory, backend_url, make_repo, release_repo, snapshot_repo

__all__ = ["BACKENDS", "CrashOutcome", "RepoFactory", "backend_url", "count_crash_points", "crash_at",
           "forget_open_repositories", "make_repo", "release_repo", "repository_state", "run_concurrently",
           "snapshot_repo"]
