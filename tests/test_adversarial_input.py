"""Hostile and careless input: each case must get a specific `ButlerError` saying what was wrong,
and leave the repository exactly as it was (every registry row, every file, the root's listing).

Tables of dataclass cases with ids, one table per kind of input: file templates, where-expressions
and binds, names (runs, collections, dataset types, dimension keys, namespaces), repository paths and
configuration files, calibration collections and data ID constraints, and the CLI. Tables whose
behaviour depends on the backend run on SQLite, PostgreSQL and MariaDB; the repository of such a
table is shared by its cases (one per backend and module), which also proves that a refused call
leaves nothing behind for the next one.
"""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import pytest
from click.testing import CliRunner

from butler import Butler, DatasetType
from butler.cli import cli
from butler.datastore._templates import FileTemplate
from butler.errors import (
    ButlerError,
    CollectionError,
    DataIdError,
    ExpressionError,
    InvalidNameError,
    RepositoryConfigError,
    RepositoryNotFoundError,
    TemplateError,
)
from butler.instrument import SimCam
from butler.testing import BACKENDS, RepoFactory, backend_url, release_repo, snapshot_repo

N_VISITS = 200
RUN = "u/tester/run1"


def state(butler: Butler) -> tuple[Any, list[str]]:
    """Every registry row and file digest, and the sorted list of everything under the root
    (SQLite's -wal/-shm files come and go with connections; .locks holds process state)."""
    listing = []
    for dirpath, dirnames, filenames in os.walk(butler.root):
        dirnames[:] = [d for d in dirnames if not (dirpath == butler.root and d == ".locks")]
        for name in dirnames + filenames:
            if not name.endswith(("-wal", "-shm")):
                listing.append(os.path.relpath(os.path.join(dirpath, name), butler.root))
    return snapshot_repo(butler), sorted(listing)


@pytest.fixture(scope="module", params=BACKENDS)
def repo(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory):
    """A writeable SimCam repository per backend: 200 visits (odd ones SimCam-g, even ones
    SimCam-r), the 'metrics' type and one dataset; shared by the cases of a module."""
    backend = request.param
    if backend != "sqlite" and backend_url(backend) is None:
        pytest.skip(f"{backend} backend not configured")
    factory = RepoFactory(str(tmp_path_factory.mktemp(f"adversarial-{backend}")), backend)
    butler = factory()
    butler = Butler(butler.root, run=RUN)
    butler.register_instrument(SimCam(), calibs=False)
    butler.insert_dimension_records("visit", [
        {"instrument": "SimCam", "id": i, "physical_filter": "SimCam-g" if i % 2 else "SimCam-r",
         "day_obs": 20261124, "exposure_time": float(i), "begin": "2026-11-24T03:00:00",
         "end": "2026-11-24T03:00:30"} for i in range(1, N_VISITS + 1)])
    butler.register_dataset_type(DatasetType("metrics", ("instrument", "visit", "detector"), "StructuredData"))
    butler.put({"a": 1}, "metrics", instrument="SimCam", visit=1, detector=1)
    yield butler
    factory.cleanup()


@dataclass(frozen=True)
class Refused:
    """A call that must raise ``error`` with a message matching ``match`` and change nothing."""

    id: str
    call: Callable[[Butler], Any]
    error: type[BaseException]
    match: str


def check_refused(butler: Butler, case: Refused) -> None:
    before = state(butler)
    with pytest.raises(case.error, match=case.match) as info:
        case.call(butler)
    assert isinstance(info.value, ButlerError)
    assert state(butler) == before


def put_metrics(run: str | None = None, dataset_type: str = "metrics", **data_id: Any) -> Callable[[Butler], Any]:
    data_id = {"instrument": "SimCam", "visit": 2, "detector": 1, **data_id}
    return lambda b: b.put({"x": 1}, dataset_type, run=run, **data_id)


# -- 1. file templates: the formatted path is checked, not only the template text ----------------
TEMPLATES = {
    "dots": "{run}/{dataset_type}/{instrument:.>9}/{visit}_{detector}",
    "slash_fill": "{run}/{dataset_type}/{instrument}_{visit:/>6}_{detector}",
    "hidden": "{run}/{dataset_type}/{instrument:.>7}/{visit}_{detector}",
    "backslash": "{run}/{dataset_type}/{instrument:\\>9}/{visit}_{detector}",
}


@pytest.fixture
def template_repo(tmp_path):
    butler = Butler.create(tmp_path / "repo", templates=TEMPLATES, run=RUN)
    butler.register_instrument(SimCam(), calibs=False)
    butler.insert_dimension_records("visit", [
        {"instrument": "SimCam", "id": 2, "physical_filter": "SimCam-r", "day_obs": 20261124}])
    for name in TEMPLATES:
        butler.register_dataset_type(DatasetType(name, ("instrument", "visit", "detector"), "StructuredData"))
    return butler


TEMPLATE_CASES = [
    Refused("format-spec-makes-dotdot", put_metrics(dataset_type="dots"), TemplateError,
            r"the value 'SimCam' of 'instrument' gives '\.\.\.SimCam' .* contains '\.\.'"),
    Refused("fill-char-makes-separators", put_metrics(dataset_type="slash_fill"), TemplateError,
            r"the value 2 of 'visit' gives '/////2' .* contains the path separator '/'"),
    Refused("format-spec-makes-hidden-component", put_metrics(dataset_type="hidden"), TemplateError,
            r"gives '\.SimCam' .* starts a path component with '\.'"),
    Refused("fill-char-backslash", put_metrics(dataset_type="backslash"), TemplateError, "contains a backslash"),
]


@pytest.mark.parametrize("case", TEMPLATE_CASES, ids=lambda c: c.id)
def test_put_refuses_a_formatted_path_outside_the_repository(template_repo, case):
    check_refused(template_repo, case)
    assert not os.path.exists(os.path.join(os.path.dirname(template_repo.root), "SimCam"))


def test_ingest_refuses_a_formatted_path_outside_the_repository(template_repo, tmp_path):
    source = tmp_path / "source.json"
    source.write_text('{"x": 1}')
    case = Refused("ingest-dots", lambda b: b.ingest("dots", [(source, {"instrument": "SimCam", "visit": 2,
                                                                        "detector": 1})]),
                   TemplateError, r"gives '\.\.\.SimCam'")
    check_refused(template_repo, case)
    assert source.read_text() == '{"x": 1}'


@dataclass(frozen=True)
class TemplateValue:
    id: str
    values: dict[str, Any]
    match: str


TEMPLATE_VALUE_CASES = [
    TemplateValue("separator-in-value", {"physical_filter": "r/../../x"}, r"'physical_filter' .* contains the path separator"),
    TemplateValue("dotdot-value", {"physical_filter": ".."}, r"'physical_filter' .* contains '\.\.'"),
    TemplateValue("nul-in-value", {"physical_filter": "r\x00x"}, r"'physical_filter' .* NUL character at position 1"),
    TemplateValue("hidden-value", {"physical_filter": ".r"}, r"'physical_filter' .* starts a path component"),
    TemplateValue("dotdot-run", {"run": "u/../../etc"}, r"'run' .* contains '\.\.'"),
]


@pytest.mark.parametrize("case", TEMPLATE_VALUE_CASES, ids=lambda c: c.id)
def test_template_format_names_the_value_that_would_escape(case):
    """Values that did not come through data ID validation (records, hand-made values) are
    refused by the template itself."""
    values = {"run": "u/a/r", "dataset_type": "raw", "instrument": "SimCam", "visit": 1,
              "physical_filter": "r", **case.values}
    for text in ("{run}/{dataset_type}/{physical_filter}/{visit}", "{run}/{dataset_type}/{physical_filter:>1}_{dims}"):
        with pytest.raises(TemplateError, match=case.match):
            FileTemplate(text).format(values, ("instrument", "visit"))


def test_template_format_keeps_safe_paths():
    template = FileTemplate("{run}/{dataset_type}/{band?}/{day_obs?}/{dataset_type}_{dims}")
    values = {"run": "u/alice/run1", "dataset_type": "raw", "instrument": "SimCam", "exposure": 12, "detector": 3,
              "band": "r", "day_obs": 20261124}
    assert template.format(values, ("instrument", "exposure", "detector")) == \
        "u/alice/run1/raw/r/20261124/raw_SimCam_12_3"
    assert template.format({**values, "band": None}, ("instrument", "exposure", "detector")) == \
        "u/alice/run1/raw/20261124/raw_SimCam_12_3"


# -- 2-4. where-expressions: long chains and lists work everywhere, NUL is refused ---------------
@dataclass(frozen=True)
class Works:
    """A query that must work and give ``expected`` visits."""

    id: str
    where: str
    bind: dict[str, Any] = field(default_factory=dict)
    expected: frozenset[int] = frozenset()


ODD = frozenset(range(1, N_VISITS + 1, 2))
EVEN = frozenset(range(2, N_VISITS + 1, 2))
ALL = ODD | EVEN

LARGE_QUERIES = [
    Works("or-1000-equalities", " OR ".join(f"visit = {i}" for i in range(1, 2000, 2)), expected=ODD),
    Works("or-5000-equalities", " OR ".join(f"visit = {i}" for i in range(0, 10000, 2)), expected=EVEN),
    Works("or-1000-mixed-terms", " OR ".join(f"(visit = {i} AND visit.exposure_time > {i - 1}.5)"
                                              for i in range(1, 1001)), expected=ALL),
    Works("or-5000-comparisons", " OR ".join(f"visit >= {i} AND visit <= {i}" for i in range(1, 5001, 2)),
          expected=ODD),
    Works("and-1000", " AND ".join(f"visit != {i}" for i in range(1, 2001, 2)), expected=EVEN),
    Works("and-5000", " AND ".join(f"visit != {i}" for i in range(2, 10001, 2)), expected=ODD),
    Works("in-5000-ranges", "visit IN (" + ", ".join(f"{i}..{i}" for i in range(1, 10001, 2)) + ")", expected=ODD),
    Works("in-100k-int-bind", "visit IN (:v)", {"v": list(range(0, 200_000, 2))}, EVEN),
    Works("not-in-100k-int-bind", "visit NOT IN (:v)", {"v": list(range(0, 200_000, 2))}, ODD),
    Works("in-100k-int-literals", "visit IN (" + ", ".join(str(i) for i in range(1, 200_000, 2)) + ")",
          expected=ODD),
    Works("in-40k-str-bind", "physical_filter IN (:f)", {"f": ["SimCam-r", *(f"F{i}" for i in range(40_000))]},
          EVEN),
    Works("in-40k-str-none-match", "physical_filter IN (:f)", {"f": ["simcam-r", *(f"F{i}" for i in range(40_000))]},
          frozenset()),
    Works("in-40k-float-bind", "visit.exposure_time IN (:t)", {"t": [1.0, 3.0, *(i + 0.5 for i in range(40_000))]},
          frozenset({1, 3})),
]


@pytest.mark.parametrize("case", LARGE_QUERIES, ids=lambda c: c.id)
def test_large_where_expressions_work(repo, case):
    found = repo.query_data_ids(["visit"], where=case.where, bind=case.bind, instrument="SimCam")
    assert {d["visit"] for d in found} == case.expected


WHERE_CASES = [
    Refused("nul-in-where", lambda b: b.query_data_ids(["visit"], where="instrument = 'Sim\x00Cam'"),
            ExpressionError, r"NUL character \(\\x00\) at position 17"),
    Refused("nul-in-bind", lambda b: b.query_data_ids(["visit"], where="instrument = :i", bind={"i": "Sim\x00Cam"}),
            ExpressionError, "bind parameter :i .* contains a NUL character at position 3"),
    Refused("nul-in-bind-list", lambda b: b.query_data_ids(["visit"], where="instrument IN (:i)",
                                                          bind={"i": ["SimCam", "Sim\x00Cam"]}),
            ExpressionError, r"item 1 of the bind parameter :i .* NUL character at position 3"),
    Refused("nul-in-data-id", lambda b: b.query_data_ids(["visit"], instrument="Sim\x00Cam"),
            DataIdError, "'instrument': it contains a NUL character at position 3"),
    Refused("nul-in-dataset-data-id", lambda b: b.query_datasets("metrics", collections=RUN, instrument="S\x00"),
            DataIdError, "NUL character at position 1"),
    Refused("nul-in-put-data-id", put_metrics(instrument="Sim\x00Cam"), DataIdError, "NUL character at position 3"),
]


@pytest.mark.parametrize("case", WHERE_CASES, ids=lambda c: c.id)
def test_nul_is_refused_on_every_backend(repo, case):
    check_refused(repo, case)


# -- 7-10. names --------------------------------------------------------------------------------
RUN_NAMES = [
    ("butler.sqlite3", "name of a repository file"),
    ("butler.sqlite3-wal", "name of a repository file"),
    ("butler.sqlite3-journal/x", "name of a repository file"),
    ("butler.yaml", "name of a repository file"),
    (".locks", r"starts with '\.'"),
    (".hidden/run", r"starts with '\.'"),
    ("u/./run", "relative directory reference"),
    ("u/../../escape", "relative directory reference"),
    ("u//run", "is empty"),
    ("", "use 1 to 255 characters"),
    ("u/run\x00x", "NUL character at position 3"),
    ("u/run\x1bx", "control or space character"),
    ("u\\run", "backslash"),
    ("/u/run", "must not start or end with '/'"),
    ("x" * 256, "use 1 to 255 characters"),
]
NAME_CASES = [
    *(Refused(f"put-run-{i}", put_metrics(run=name), InvalidNameError, match) for i, (name, match) in
      enumerate(RUN_NAMES)),
    *(Refused(f"open-run-{i}", lambda b, name=name: Butler(b.root, run=name), InvalidNameError, match)
      for i, (name, match) in enumerate(RUN_NAMES[:6])),
    Refused("register-collection-reserved", lambda b: b.register_collection("butler.yaml", "TAGGED"),
            InvalidNameError, "name of a repository file"),
    Refused("collections-ints", lambda b: b.query_datasets("metrics", collections=[1, 2]), InvalidNameError,
            r"collections must be names \(strings\): item 0 .* is 1 \(int\)"),
    Refused("collections-dict", lambda b: b.query_datasets("metrics", collections={RUN: 1}), InvalidNameError,
            "collections must be a collection name or a sequence of names, not dict"),
    Refused("collections-int", lambda b: b.query_datasets("metrics", collections=5), InvalidNameError,
            "not int"),
    Refused("collections-ints-at-open", lambda b: Butler(b.root, collections=[RUN, 7]), InvalidNameError,
            r"item 1 .* is 7 \(int\)"),
    Refused("collections-none-and-no-default", lambda b: Butler(b.root).query_datasets("metrics"),
            CollectionError, "no collections to search"),
    Refused("find-dataset-collections-ints", lambda b: b.find_dataset("metrics", instrument="SimCam", visit=1,
                                                                      detector=1, collections=[1]),
            InvalidNameError, "collections must be names"),
    Refused("dataset-type-too-long", lambda b: b.register_dataset_type(
        DatasetType("d" * 129, ("instrument",), "StructuredData")), InvalidNameError, "at most 128 fit"),
    Refused("collection-too-long", lambda b: b.register_collection("c" * 256, "TAGGED"), InvalidNameError,
            "use 1 to 255 characters"),
    Refused("instrument-name-too-long", lambda b: b.insert_dimension_records(
        "instrument", [{"name": "I" * 33, "class_name": "x", "visit_max": 1, "exposure_max": 1, "detector_max": 1,
                        "definition_digest": "0"}]), InvalidNameError, "instrument.name .* 33 characters long; at most 32"),
    Refused("skymap-name-too-long", lambda b: b.insert_dimension_records(
        "skymap", [{"name": "s" * 65, "hash": "0", "tract_max": 1, "patch_nx_max": 1, "patch_ny_max": 1}]),
        InvalidNameError, "at most 64"),
    Refused("physical-filter-too-long", lambda b: b.insert_dimension_records(
        "physical_filter", [{"instrument": "SimCam", "name": "f" * 40, "band": "r"}]), InvalidNameError, "at most 32"),
]


@pytest.mark.parametrize("case", NAME_CASES, ids=lambda c: c.id)
def test_bad_names_are_refused_on_every_backend(repo, case):
    check_refused(repo, case)


def test_names_at_the_limit_round_trip_on_every_backend(repo):
    """The limits are the same on every backend, and a name of exactly the limit is stored whole
    (MariaDB used to truncate a longer dataset type name silently)."""
    name = "d" * 128
    repo.register_dataset_type(DatasetType(name, ("instrument",), "StructuredData"))
    repo.refresh()
    assert repo.registry.dataset_types.get(name).dataset_type.name == name
    collection = "u/" + "c" * 253
    repo.register_collection(collection, "TAGGED")
    repo.refresh()
    assert [c.name for c in repo.registry.collections.query(collection)] == [collection]


def test_invalid_run_name_is_a_value_error(repo):
    with pytest.raises(ValueError) as info:
        repo.put({"x": 1}, "metrics", instrument="SimCam", visit=3, detector=1, run="a/../b")
    assert not isinstance(info.value, LookupError)


@dataclass(frozen=True)
class BadNamespace:
    id: str
    namespace: str


NAMESPACES = [
    BadNamespace("quote-injection", 'x"; DROP SCHEMA public CASCADE; --'),
    BadNamespace("backtick-injection", "x`; DROP DATABASE test; --"),
    BadNamespace("space", "my schema"),
    BadNamespace("leading-digit", "1abc"),
    BadNamespace("too-long", "n" * 64),
    BadNamespace("empty", ""),
]


@pytest.mark.parametrize("case", NAMESPACES, ids=lambda c: c.id)
def test_bad_namespaces_are_refused_before_anything_is_written(tmp_path, case):
    url = backend_url("postgresql") or backend_url("mysql") or "postgresql+psycopg://127.0.0.1:1/none"
    root = tmp_path / "repo"
    with pytest.raises(InvalidNameError, match="invalid registry namespace"):
        Butler.create(root, db=url, namespace=case.namespace)
    assert not root.exists()


@pytest.mark.parametrize("backend_name", ["postgresql", "mysql"])
def test_namespaces_are_quoted_identifiers(tmp_path, backend_name):
    """A valid namespace with upper-case letters is created and dropped as that exact identifier."""
    url = backend_url(backend_name)
    if url is None:
        pytest.skip(f"{backend_name} backend not configured")
    import uuid

    import sqlalchemy as sa

    namespace = "Butler_Quoted_" + uuid.uuid4().hex[:8]
    butler = Butler.create(tmp_path / "repo", db=url, namespace=namespace)
    try:
        with butler.registry.db.transaction() as conn:
            names = sa.inspect(conn).get_schema_names()
        assert namespace in names or (backend_name == "mysql" and namespace.lower() in [n.lower() for n in names])
    finally:
        butler.registry.db.drop_namespace()
    with butler.registry.db.transaction() as conn:
        assert namespace not in sa.inspect(conn).get_schema_names()


# -- 5-6. repository paths and configuration files ----------------------------------------------
@dataclass(frozen=True)
class BadRepo:
    """Damage done to a fresh SQLite repository (or a path given instead of one)."""

    id: str
    damage: Callable[[str], str]  # root -> the path to open
    error: type[BaseException]
    match: str


def _write(name: str, data: bytes) -> Callable[[str], str]:
    def damage(root: str) -> str:
        with open(os.path.join(root, name), "wb") as f:
            f.write(data)
        return root
    return damage


def _truncate(fraction: float) -> Callable[[str], str]:
    def damage(root: str) -> str:
        path = os.path.join(root, "butler.sqlite3")
        os.truncate(path, int(os.path.getsize(path) * fraction))
        return root
    return damage


def _random_sqlite(root: str) -> str:
    path = os.path.join(root, "butler.sqlite3")
    size = os.path.getsize(path)
    with open(path, "wb") as f:
        f.write(os.urandom(size))
    return root


def _remove_sqlite(root: str) -> str:
    os.remove(os.path.join(root, "butler.sqlite3"))
    return root


def _a_file(root: str) -> str:
    path = os.path.join(os.path.dirname(root), "not-a-repo.txt")
    with open(path, "w") as f:
        f.write("x")
    return path


def _an_empty_dir(root: str) -> str:
    path = os.path.join(os.path.dirname(root), "empty-dir")
    os.makedirs(path, exist_ok=True)
    return path


def _server_unreachable(root: str) -> str:
    return _write("butler.yaml", b'{"registry": {"db": "postgresql+psycopg://127.0.0.1:1/none", '
                                  b'"namespace": "ns"}}')(root)


BAD_REPOS = [
    BadRepo("config-garbage-bytes", _write("butler.yaml", b"\x00\xff\xfe\x80garbage"), RepositoryConfigError,
            "cannot read the repository configuration .*butler.yaml"),
    BadRepo("config-truncated-json", _write("butler.yaml", b'{"registry": {"db": "sqlite:///butl'),
            RepositoryConfigError, "butler.yaml is neither valid JSON nor valid YAML"),
    BadRepo("config-yaml-list", _write("butler.yaml", b"- registry\n- datastore\n"), RepositoryConfigError,
            "butler.yaml must be a mapping .* holds a list"),
    BadRepo("config-plain-text", _write("butler.yaml", b"hello world"), RepositoryConfigError, "holds a str"),
    BadRepo("config-db-not-a-string", _write("butler.yaml", b'{"registry": {"db": 5}}'), RepositoryConfigError,
            "registry.db must be a string, not int"),
    BadRepo("config-registry-not-a-mapping", _write("butler.yaml", b'{"registry": ["db"]}'),
            RepositoryConfigError, "'registry' must be a mapping, not list"),
    BadRepo("config-templates-wrong-type", _write("butler.yaml", b'{"datastore": {"templates": {"raw": 3}}}'),
            RepositoryConfigError, "datastore.templates must be a mapping of names to strings"),
    BadRepo("config-namespace-injection", _write("butler.yaml", b'{"registry": {"namespace": "x\\"; DROP"}}'),
            RepositoryConfigError, "invalid registry namespace"),
    BadRepo("sqlite-random-bytes", _random_sqlite, RepositoryConfigError,
            "registry file .*butler.sqlite3 is not a readable butler registry .*file is not a database"),
    BadRepo("sqlite-truncated", _truncate(0.3), RepositoryConfigError,
            "registry file .*butler.sqlite3 is not a readable butler registry"),
    BadRepo("sqlite-truncated-to-header", _truncate(0.001), RepositoryConfigError, "butler.sqlite3"),
    BadRepo("sqlite-empty", _truncate(0.0), RepositoryConfigError, "is 0 bytes long, too short"),
    BadRepo("sqlite-missing", _remove_sqlite, RepositoryConfigError,
            "registry file .*butler.sqlite3 is missing; .*nothing was created"),
    BadRepo("a-file-as-repository", _a_file, RepositoryConfigError, "not-a-repo.txt is a file, not a repository"),
    BadRepo("a-directory-that-is-not-a-repository", _an_empty_dir, RepositoryNotFoundError,
            "empty-dir is not a butler repository: it has no butler.yaml"),
    BadRepo("server-unreachable", _server_unreachable, ButlerError, "cannot connect to the registry database"),
]


@pytest.fixture
def damaged(tmp_path):
    """A fresh SQLite repository with a dataset, forgotten by this process (as by a new one)."""
    root = str(tmp_path / "repo")
    butler = Butler.create(root, run=RUN)
    butler.register_instrument(SimCam(), calibs=False)
    butler.register_dataset_type(DatasetType("counts", ("instrument",), "StructuredData"))
    butler.put({"n": 1}, "counts", instrument="SimCam")
    release_repo(butler)
    return root


def listing(path: str, *, connected: bool = False) -> list[tuple[str, int]]:
    """Every file (and its size) beside and under ``path``; with ``connected``, without the
    -wal/-shm files that any connection to an intact SQLite registry creates."""
    parent = os.path.dirname(path)
    out = []
    for dirpath, _, filenames in os.walk(parent):
        for name in filenames:
            if connected and name.endswith(("-wal", "-shm")):
                continue
            full = os.path.join(dirpath, name)
            out.append((os.path.relpath(full, parent), os.path.getsize(full)))
    return sorted(out)


@pytest.mark.parametrize("case", BAD_REPOS, ids=lambda c: c.id)
@pytest.mark.parametrize("mode", ["read-only", "writeable"])
def test_damaged_repositories_are_reported_and_left_alone(damaged, case, mode):
    path = case.damage(damaged)
    before = listing(damaged)
    with pytest.raises(case.error, match=case.match) as info:
        butler = Butler(path, writeable=mode == "writeable")
        butler.query_datasets("counts", collections=RUN)
    assert isinstance(info.value, ButlerError)
    assert os.fspath(path) in str(info.value) or case.id == "server-unreachable"
    assert listing(damaged) == before  # nothing written: no SQLite file (or -wal/-shm) created


def test_read_only_open_of_a_missing_sqlite_file_creates_nothing(damaged):
    _remove_sqlite(damaged)
    before = sorted(os.listdir(damaged))
    with pytest.raises(RepositoryConfigError, match=r"butler.sqlite3 is missing"):
        Butler(damaged)
    assert sorted(os.listdir(damaged)) == before
    assert not any(name.startswith("butler.sqlite3") for name in before)


# -- 11. calibration collections and data ID constraints ----------------------------------------
@pytest.fixture
def calib_repo(repo_factory):
    butler = repo_factory()
    butler = Butler(butler.root, run=RUN)
    butler.register_instrument(SimCam())  # SimCam/calib -> SimCam/calib/unbounded (CALIBRATION)
    butler.register_collection("u/tester/flats", "CALIBRATION")
    butler.register_run(RUN)
    butler.set_chain("u/tester/mixed", ["u/tester/flats", RUN])
    return butler


CALIB_CASES = [
    Refused("calibs-run-collection", lambda b: Butler(b.root, calibs={"flat": RUN}), CollectionError,
            r"calibs=\{'flat': 'u/tester/run1'\}: 'u/tester/run1' is a RUN collection.*CALIBRATION collections"),
    Refused("calibs-list-with-a-run", lambda b: Butler(b.root, calibs={"flat": ["u/tester/flats", RUN]}),
            CollectionError, "is a RUN collection"),
    Refused("calibs-chain-with-a-run", lambda b: Butler(b.root, calibs={"flat": "u/tester/mixed"}),
            CollectionError, r"'u/tester/run1' \(in the chain 'u/tester/mixed'\) is a RUN collection"),
    Refused("calibs-missing-collection", lambda b: Butler(b.root, calibs={"flat": "u/tester/nope"}),
            CollectionError, "does not exist"),
    Refused("calibs-run-lazy-first-lookup", lambda b: Butler(b.root, calibs={"camera": RUN}, _lazy=True).find_calibs(
        "camera", [({"instrument": "SimCam"}, "2026-11-24T03:00:00")]), CollectionError, "is a RUN collection"),
    Refused("visit-without-day-obs", lambda b: b.insert_dimension_records("visit", [
        {"instrument": "SimCam", "id": 900, "physical_filter": "SimCam-r"}]), DataIdError,
        "missing required field 'day_obs'"),
    Refused("exposure-without-physical-filter", lambda b: b.insert_dimension_records("exposure", [
        {"instrument": "SimCam", "id": 900, "day_obs": 20261124}]), DataIdError,
        "missing required field 'physical_filter'"),
]


@pytest.mark.parametrize("case", CALIB_CASES, ids=lambda c: c.id)
def test_calibration_collections_and_records(calib_repo, case):
    check_refused(calib_repo, case)


def test_calibs_of_calibration_collections_are_accepted(calib_repo):
    butler = Butler(calib_repo.root, calibs={"flat": "u/tester/flats", "bias": "SimCam/calib"})
    assert butler.calibs["flat"] == "u/tester/flats"


@pytest.fixture
def sky_repo(repo_factory):
    from butler.skymap import RingsSkyMap

    butler = repo_factory()
    butler = Butler(butler.root, run=RUN)
    butler.register_skymap(RingsSkyMap("rings6", num_rings=6), tracts=[3, 4])
    return butler


SKY_CASES = [
    Refused("tract-beyond-the-skymap", lambda b: b.query_data_ids(["patch"], skymap="rings6", tract=10_000),
            DataIdError, r"no tract record matches skymap='rings6', tract=10000; skymap 'rings6' has tracts 0\.\.\d+"),
    Refused("tract-not-registered", lambda b: b.query_data_ids(["patch"], skymap="rings6", tract=5),
            DataIdError, r"tract 5 of skymap 'rings6' \(tracts 0\.\.\d+\) is not registered"),
    Refused("unknown-skymap", lambda b: b.query_data_ids(["patch"], skymap="nope", tract=3),
            DataIdError, "no skymap record matches skymap='nope'"),
]


@pytest.mark.parametrize("case", SKY_CASES, ids=lambda c: c.id)
def test_constraints_that_do_not_exist_are_named(sky_repo, case):
    check_refused(sky_repo, case)


def test_constraints_that_exist_still_query(sky_repo):
    patches = sky_repo.query_data_ids(["patch"], skymap="rings6", tract=3)
    assert patches and {p["tract"] for p in patches} == {3}
    assert sky_repo.query_data_ids(["patch"], skymap="rings6", tract=3, where="patch < 0") == []


# -- 12. the CLI: exit 2, a message, no traceback -----------------------------------------------
@dataclass(frozen=True)
class CliCase:
    id: str
    prepare: Callable[[str], str]  # root -> repo argument
    args: tuple[str, ...]
    match: str
    intact: bool = False  # the repository is sound (a connection may add -wal/-shm files)


def _same(root: str) -> str:
    return root


CLI_CASES = [
    CliCase("bad-where", _same, ("query-datasets", "{repo}", "counts", "--collections", RUN,
                                 "--where", "instrument = = 'x'"), "error: ", intact=True),
    CliCase("unknown-bind-in-where", _same, ("query-datasets", "{repo}", "counts", "--collections", RUN,
                                             "--where", "instrument = :x"), "bind parameter :x is not defined",
            intact=True),
    CliCase("nul-in-where", _same, ("query-datasets", "{repo}", "counts", "--collections", RUN,
                                    "--where", "instrument = 'a\x00b'"), "NUL character", intact=True),
    CliCase("collections-that-do-not-exist", _same, ("query-datasets", "{repo}", "counts", "--collections",
                                                     "u/../x"), "collection 'u/../x' does not exist", intact=True),
    CliCase("corrupted-config", _write("butler.yaml", b"- a\n"), ("query-datasets", "{repo}", "counts",
                                                                 "--collections", RUN), "must be a mapping"),
    CliCase("corrupted-sqlite", _random_sqlite, ("query-datasets", "{repo}", "counts", "--collections", RUN),
            "not a readable butler registry"),
    CliCase("missing-sqlite", _remove_sqlite, ("query-collections", "{repo}"), "butler.sqlite3 is missing"),
    CliCase("unreachable-server", _server_unreachable, ("query-collections", "{repo}"),
            "cannot connect to the registry database"),
    CliCase("a-file-as-repository", _a_file, ("query-collections", "{repo}"), "is a file"),  # click's own check
]


@pytest.mark.parametrize("case", CLI_CASES, ids=lambda c: c.id)
def test_cli_reports_butler_errors_as_usage_errors(damaged, case):
    repo = case.prepare(damaged)
    args = [a.replace("{repo}", repo) for a in case.args]
    before = listing(damaged, connected=case.intact)
    result = CliRunner().invoke(cli, args)
    assert result.exit_code == 2, result.output
    assert result.exception is None or isinstance(result.exception, SystemExit)
    output = result.stderr if hasattr(result, "stderr") else result.output
    assert "Traceback" not in output and case.match in output
    if case.id != "a-file-as-repository":  # click reports a bad REPO argument as a usage error itself
        assert output.startswith("error: ")
    assert listing(damaged, connected=case.intact) == before


def test_cli_subprocess_prints_no_traceback(damaged):
    _write("butler.yaml", b'{"registry": {"db": 5}}')(damaged)
    proc = subprocess.run([sys.executable, "-m", "butler.cli", "query-collections", damaged],
                          check=False, capture_output=True, text=True, env={**os.environ}, timeout=120)
    assert proc.returncode == 2, proc.stderr
    assert proc.stderr.startswith("error: ") and "Traceback" not in proc.stderr
    assert "registry.db must be a string" in proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1


def test_a_query_beyond_the_parameter_limit_is_an_expression_error(tmp_path):
    """What cannot be merged into one IN (33,000 two-column terms: 66,000 parameters) exceeds
    PostgreSQL's 65,535 parameters: an ExpressionError that counts the terms and suggests IN."""
    url = backend_url("postgresql")
    if url is None:
        pytest.skip("postgresql backend not configured")
    factory = RepoFactory(str(tmp_path), "postgresql")
    try:
        butler = Butler(factory().root, run=RUN)
        butler.register_instrument(SimCam(), calibs=False)
        where = " OR ".join(f"(visit = {i} AND detector = {i})" for i in range(33_000))
        with pytest.raises(ExpressionError, match=r"has 66000 comparisons: write equalities .* as IN \(\.\.\.\)"):
            butler.query_data_ids(["visit", "detector"], where=where, instrument="SimCam")
    finally:
        factory.cleanup()
