"""Helpers for testing code that uses the butler: repositories on each registry backend, several
users in processes of their own, crash enumeration."""

from ._crash import CrashOutcome, count_crash_points, crash_at, forget_open_repositories, repository_state
from ._processes import run_concurrently
from ._repos import BACKENDS, SIMCAM_VISITS, RepoFactory, backend_url, make_repo, release_repo, snapshot_repo
from ._servers import FlippingProxy, Proxy, ServedRepository, served_repository
from ._sshd import SshServer, remote_butler, ssh_server
from ._users import TEST_ROLES, create_login_roles, share_repository

__all__ = [
    "BACKENDS",
    "SIMCAM_VISITS",
    "TEST_ROLES",
    "CrashOutcome",
    "FlippingProxy",
    "Proxy",
    "RepoFactory",
    "ServedRepository",
    "SshServer",
    "backend_url",
    "count_crash_points",
    "crash_at",
    "create_login_roles",
    "forget_open_repositories",
    "make_repo",
    "release_repo",
    "remote_butler",
    "repository_state",
    "run_concurrently",
    "served_repository",
    "share_repository",
    "snapshot_repo",
    "ssh_server",
]
