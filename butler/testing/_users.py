"""Several users of one repository, each in processes of their own, on every backend.

On SQLite a user is ``$BUTLER_USER`` (the documented override of the OS account). On PostgreSQL
and MySQL/MariaDB a user is a database role, which ``$BUTLER_USER`` cannot change: `share_repository`
creates login roles (kept between test runs) allowed everything on the repository's namespace and
rewrites ``butler.yaml`` to name no database user, so that each process connects as the role its
own credentials say (``PGUSER``; a ``~/.my.cnf`` per user for MySQL), as the users of a shared
repository do. The administrator's Butler (which created the repository) keeps its connection.

A process of a user applies the environment `share_repository` returned before it opens the
repository (``os.environ.update(env)``).
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from typing import Any

from ._repos import backend_url

__all__ = ["TEST_ROLES", "create_login_roles", "share_repository"]

TEST_ROLES = ("butler_alice", "butler_bob")
"""The login roles (SQLite: ``$BUTLER_USER`` values) that tests use as two different users."""


def create_login_roles(admin: Any, roles: Sequence[str] = TEST_ROLES) -> None:
    """On a server registry, login roles ``roles`` (kept between test runs) allowed everything on
    the namespace of ``admin``'s repository, as it is now; nothing on SQLite."""
    backend = admin.registry.db.dialect
    if backend != "sqlite":
        _create_roles(backend, admin.registry.db.namespace, roles)


def _create_roles(backend: str, namespace: str, roles: Sequence[str]) -> None:
    from ..registry._roles import create_login_roles as create_roles

    url = backend_url(backend)
    assert url is not None, f"no server URL for {backend}"
    create_roles(url, namespace, roles)


def _anonymous_config(admin: Any, backend: str) -> None:
    """Rewrite the repository's ``butler.yaml`` so its URL names no user nor password."""
    from ..registry._roles import url_without_credentials

    admin_url = backend_url(backend)
    assert admin_url is not None, f"no server URL for {backend}"
    if backend == "mysql":  # the users may use only the repository's database
        url = url_without_credentials(admin_url, database=admin.registry.db.namespace, mysql_option_file="~/.my.cnf")
    else:
        url = url_without_credentials(admin_url)
    path = os.path.join(admin.root, "butler.yaml")
    with open(path) as f:
        text = f.read()
    header, _, body = text.partition("{")
    config = json.loads("{" + body)
    config["registry"]["db"] = url
    with open(path, "w") as f:
        f.write(header + json.dumps(config, indent=2) + "\n")


def _user_env(backend: str, user: str, other: str, home: str) -> dict[str, str]:
    """On servers the user's credentials, and a $BUTLER_USER naming ``other``, which must change nothing."""
    if backend == "sqlite":
        return {"BUTLER_USER": user}
    if backend == "postgresql":
        return {"PGUSER": user, "BUTLER_USER": other}
    os.makedirs(home, exist_ok=True)
    with open(os.path.join(home, ".my.cnf"), "w") as f:
        f.write(f"[client]\nuser={user}\n")
    return {"HOME": home, "BUTLER_USER": other}


def share_repository(admin: Any, homes: str, users: Sequence[str] = TEST_ROLES) -> dict[str, dict[str, str]]:
    """Make the repository of ``admin`` (a Butler on any backend, made by `make_repo`) usable by
    ``users``: the environment of each user's processes, by user. ``homes`` is a scratch
    directory for per-user client configuration files. Call it once the administrator has
    registered what the users need (server tables created later are not granted to them)."""
    backend = admin.registry.db.dialect
    if backend != "sqlite":
        create_login_roles(admin, users)
        _anonymous_config(admin, backend)
    envs = {}
    for i, user in enumerate(users):
        other = users[(i + 1) % len(users)]
        envs[user] = _user_env(backend, user, other, os.path.join(homes, f"home-{user}"))
    return envs
