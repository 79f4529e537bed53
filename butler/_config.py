"""Repository configuration: the ``butler.yaml`` file at a repository's root.

The file says where the registry lives (``db``: a SQLAlchemy URL; SQLite paths are relative to
the root, so a repository directory can be moved) and how files are named (templates,
formatter overrides). It is read once per process per modification time.

The file is written as JSON, which is also YAML: opening a repository parses it with ``json``
(PyYAML costs ~10 ms to import, a fifth of the first-open budget), and a file that a person
rewrote in block-style YAML is still read, with ``yaml``.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from typing import Any

from .errors import RepositoryNotFoundError

__all__ = ["RepoConfig", "CONFIG_NAME", "DEFAULT_SQLITE"]

CONFIG_NAME = "butler.yaml"
DEFAULT_SQLITE = "sqlite:///butler.sqlite3"

_CACHE: dict[str, tuple[int, RepoConfig]] = {}
_HEADER = "# Butler repository configuration (JSON, which is also YAML: either syntax may be used).\n"


def _parse(text: str) -> dict[str, Any]:
    """The configuration mapping: JSON after leading ``#`` comment lines, else any YAML."""
    body = text
    while body.lstrip().startswith("#"):
        body = body.lstrip().partition("\n")[2]
    try:
        data = json.loads(body) if body.strip() else {}
    except ValueError:
        import yaml

        data = yaml.load(text, Loader=getattr(yaml, "CSafeLoader", yaml.SafeLoader))
    return data or {}


@dataclass(frozen=True)
class RepoConfig:
    root: str
    db: str = DEFAULT_SQLITE
    namespace: str | None = None
    templates: dict[str, str] = field(default_factory=dict)
    formatters: dict[str, str] = field(default_factory=dict)

    @property
    def db_url(self) -> str:
        """The registry URL with a relative SQLite path resolved against the root."""
        if self.db.startswith("sqlite:///") and not self.db.startswith("sqlite:////"):
            rel = self.db[len("sqlite:///"):]
            return "sqlite:///" + os.path.join(self.root, rel)
        return self.db

    def to_dict(self) -> dict[str, Any]:
        return {
            "registry": {"db": self.db, "namespace": self.namespace},
            "datastore": {"templates": dict(self.templates), "formatters": dict(self.formatters)},
        }

    def write(self) -> None:
        path = os.path.join(self.root, CONFIG_NAME)
        with open(path, "x") as f:
            f.write(_HEADER)
            json.dump(self.to_dict(), f, indent=2)
            f.write("\n")

    @classmethod
    def read(cls, root: str) -> RepoConfig:
        root = os.path.abspath(os.fspath(root))
        path = os.path.join(root, CONFIG_NAME)
        try:
            st = os.stat(path)
        except FileNotFoundError:
            if not os.path.isdir(root):
                raise RepositoryNotFoundError(
                    f"repository {root} does not exist; create one with Butler.create({root!r}) "
                    "or `butler create`"
                ) from None
            raise RepositoryNotFoundError(
                f"{root} is not a butler repository: it has no {CONFIG_NAME}; create one with `butler create`"
            ) from None
        cached = _CACHE.get(path)
        if cached is not None and cached[0] == st.st_mtime_ns:
            return cached[1]
        with open(path) as f:
            data = _parse(f.read())
        registry = data.get("registry", {})
        datastore = data.get("datastore", {})
        config = cls(
            root=root,
            db=registry.get("db") or DEFAULT_SQLITE,
            namespace=registry.get("namespace"),
            templates=dict(datastore.get("templates") or {}),
            formatters=dict(datastore.get("formatters") or {}),
        )
        _CACHE[path] = (st.st_mtime_ns, config)
        return config
