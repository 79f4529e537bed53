"""Repository configuration: the ``butler.yaml`` file at a repository's root.

The file says where the registry lives (``db``: a SQLAlchemy URL; SQLite paths are relative to
the root, so a repository directory can be moved) and how files are named (templates,
formatter overrides). It is read once per process per modification time.

The file is written as JSON, which is also YAML: opening a repository parses it with ``json``
(PyYAML costs ~10 ms to import, a fifth of the first-open budget), and a file that a person
rewrote in block-style YAML is still read, with ``yaml``.

A file that does not parse, is not a mapping, or has values of the wrong type is a
`RepositoryConfigError` naming the file and the key; so is a repository path that is a file.
"""

from __future__ import annotations

import json
import os
import stat
from dataclasses import dataclass, field
from typing import Any

from .errors import RepositoryConfigError, RepositoryNotFoundError

__all__ = ["CONFIG_NAME", "DEFAULT_SQLITE", "RepoConfig"]

CONFIG_NAME = "butler.yaml"
DEFAULT_SQLITE = "sqlite:///butler.sqlite3"

_CACHE: dict[str, tuple[int, RepoConfig]] = {}
_HEADER = "# Butler repository configuration (JSON, which is also YAML: either syntax may be used).\n"


def _parse(text: str, path: str) -> dict[str, Any]:
    """The configuration mapping: JSON after leading ``#`` comment lines, else any YAML."""
    body = text
    while body.lstrip().startswith("#"):
        body = body.lstrip().partition("\n")[2]
    try:
        data = json.loads(body) if body.strip() else {}
    except ValueError:
        import yaml

        try:
            data = yaml.load(text, Loader=getattr(yaml, "CSafeLoader", yaml.SafeLoader))
        except yaml.YAMLError as err:
            where = getattr(err, "problem_mark", None)
            at = f" (line {where.line + 1}, column {where.column + 1})" if where is not None else ""
            raise RepositoryConfigError(
                f"the repository configuration {path} is neither valid JSON nor valid YAML{at}: "
                f"{getattr(err, 'problem', None) or err}; restore it from a backup or a copy of the repository"
            ) from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise RepositoryConfigError(
            f"the repository configuration {path} must be a mapping with 'registry' and 'datastore' keys, "
            f"but it holds a {type(data).__name__}"
        )
    return data


def _section(data: dict[str, Any], key: str, path: str) -> dict[str, Any]:
    value = data.get(key)
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise RepositoryConfigError(
            f"in the repository configuration {path}, {key!r} must be a mapping, not {type(value).__name__} "
            f"({value!r:.60})"
        )
    return value


def _typed(section: dict[str, Any], key: str, where: str, path: str, *, mapping: bool = False) -> Any:
    """``section[key]``: a string (or, with ``mapping``, a mapping of strings to strings), or None."""
    value = section.get(key)
    if value is None:
        return None
    if mapping:
        if isinstance(value, dict) and all(isinstance(k, str) and isinstance(v, str) for k, v in value.items()):
            return value
        wanted = "a mapping of names to strings"
    else:
        if isinstance(value, str):
            return value
        wanted = "a string"
    raise RepositoryConfigError(
        f"in the repository configuration {path}, {where}.{key} must be {wanted}, not "
        f"{type(value).__name__} ({value!r:.60})"
    )


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

    @property
    def relative_sqlite(self) -> str | None:
        """The SQLite registry's path relative to the root (None for server URLs and absolute paths)."""
        if self.db.startswith("sqlite:///") and not self.db.startswith("sqlite:////"):
            return self.db[len("sqlite:///"):]
        return None

    @property
    def root_files(self) -> tuple[str, ...]:
        """Names at the root that belong to the repository (a RUN must not be named like them)."""
        if self.db.startswith("sqlite:///") and not self.db.startswith("sqlite:////"):
            return (self.db[len("sqlite:///"):].split("/", 1)[0],)
        return ()

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
        except NotADirectoryError:
            raise RepositoryConfigError(
                f"{root} is a file, not a repository directory; give the directory that holds {CONFIG_NAME}"
            ) from None
        except FileNotFoundError:
            if not os.path.isdir(root):
                raise RepositoryNotFoundError(
                    f"repository {root} does not exist; create one with Butler.create({root!r}) "
                    "or `butler create`"
                ) from None
            raise RepositoryNotFoundError(
                f"{root} is not a butler repository: it has no {CONFIG_NAME}; create one with `butler create`"
            ) from None
        if not stat.S_ISREG(st.st_mode):
            raise RepositoryConfigError(f"the repository configuration {path} is not a regular file")
        cached = _CACHE.get(path)
        if cached is not None and cached[0] == st.st_mtime_ns:
            return cached[1]
        try:
            with open(path, encoding="utf-8") as f:
                text = f.read()
        except (OSError, UnicodeDecodeError) as err:
            raise RepositoryConfigError(f"cannot read the repository configuration {path}: {err}") from None
        config = cls.from_text(root, text, path)
        _CACHE[path] = (st.st_mtime_ns, config)
        return config

    @classmethod
    def from_text(cls, root: str, text: str, path: str) -> RepoConfig:
        """The configuration in ``text`` (read from ``path``, named in errors) of the repository at
        ``root``: a directory, or the URL of a statically hosted repository."""
        data = _parse(text, path)
        registry = _section(data, "registry", path)
        datastore = _section(data, "datastore", path)
        namespace = _typed(registry, "namespace", "registry", path)
        if namespace is not None:
            from .registry._database import validate_namespace

            try:
                validate_namespace(namespace)
            except ValueError as err:
                raise RepositoryConfigError(f"in the repository configuration {path}: {err}") from None
        return cls(
            root=root,
            db=_typed(registry, "db", "registry", path) or DEFAULT_SQLITE,
            namespace=namespace,
            templates=dict(_typed(datastore, "templates", "datastore", path, mapping=True) or {}),
            formatters=dict(_typed(datastore, "formatters", "datastore", path, mapping=True) or {}),
        )
