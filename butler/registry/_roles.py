"""Server accounts for shared repositories: login roles granted a namespace, and URLs without
credentials (each user's client supplies its own: ``PGUSER``, ``~/.my.cnf``).

Administration, not registry access: these connect with the administrator's URL, outside any
repository's engine (no pool is kept).
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa

__all__ = ["create_login_roles", "url_without_credentials"]


def create_login_roles(admin_url: str, namespace: str, roles: Sequence[str]) -> None:
    """Create login roles (PostgreSQL) or users (MySQL, from any host) ``roles`` if absent, allowed
    everything on the tables of ``namespace`` as it is now (later tables are not granted)."""
    engine = sa.create_engine(admin_url, poolclass=sa.pool.NullPool)
    backend = engine.dialect.name
    try:
        with engine.begin() as conn:
            for role in roles:
                if backend == "postgresql":
                    conn.exec_driver_sql(
                        f"DO $$ BEGIN CREATE ROLE {role} LOGIN; EXCEPTION WHEN duplicate_object OR unique_violation "
                        "THEN NULL; END $$")
                    conn.exec_driver_sql(f'GRANT USAGE, CREATE ON SCHEMA "{namespace}" TO {role}')
                    conn.exec_driver_sql(f'GRANT ALL ON ALL TABLES IN SCHEMA "{namespace}" TO {role}')
                    conn.exec_driver_sql(f'GRANT ALL ON ALL SEQUENCES IN SCHEMA "{namespace}" TO {role}')
                elif backend == "mysql":
                    for host in ("%", "localhost"):
                        conn.execute(sa.text(f"CREATE USER IF NOT EXISTS '{role}'@'{host}'"))
                        conn.execute(sa.text(f"GRANT ALL ON `{namespace}`.* TO '{role}'@'{host}'"))
                else:
                    raise ValueError(f"{backend} has no login roles; use PostgreSQL or MySQL")
    finally:
        engine.dispose()


def url_without_credentials(url: str, *, database: str | None = None, mysql_option_file: str | None = None) -> str:
    """``url`` without user nor password (and with ``database`` instead of its own, when given):
    what a shared repository's configuration names. ``mysql_option_file`` makes a MySQL client read
    the user from that file (``read_default_file``)."""
    admin_url = sa.engine.make_url(url)
    out = sa.engine.URL.create(admin_url.drivername, host=admin_url.host, port=admin_url.port,
                               database=admin_url.database, query=admin_url.query)
    if database is not None:
        out = out.set(database=database)
    if mysql_option_file is not None:
        out = out.update_query_dict({"read_default_file": mysql_option_file})
    return out.render_as_string(hide_password=False)
