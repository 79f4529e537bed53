"""A stateful property test of a repository used by several users and processes (issue 11).

`RepositoryMachine` is a hypothesis ``RuleBasedStateMachine``: its rules put, replace, remove,
remove runs, hand runs over, get and query through the Butlers of several long-lived processes
(`UserProcess`: one Butler each, commands over a pipe, so its caches live across steps as a
user's session would), and check every answer against an in-memory model of what the repository
must hold: ``{(run, dataset type, data ID): (dataset id, value)}``, the runs and their owners.
After every step the administrator's Butler (in the test's own process, with caches of its own)
must find exactly the model, `Butler.verify` must report nothing and the file journal must be
empty. No process calls ``refresh()``: a committed write of one process must be visible to every
other on its next call. Each example starts from an empty repository and processes that reopen
it with nothing cached, so that a failing example replays, and shrinks, the same way.

The space is small on purpose, so that collisions happen: three runs with nested names, two
dataset types of different dimensions, four data IDs. `bind_machine` makes the machine class for
one repository (any backend; prepared by `prepare_repository`, shared by `share_repository`).
"""

from __future__ import annotations

import fnmatch
import os
import re
import traceback
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from hypothesis import strategies as st
from hypothesis.stateful import Bundle, RuleBasedStateMachine, initialize, invariant, multiple, precondition, rule

from ._repos import SIMCAM_VISITS

if TYPE_CHECKING:
    from .._dataset_ref import DatasetRef

__all__ = ["CLIENTS", "RUNS", "UserProcess", "bind_machine", "prepare_repository"]

RUNS = ("u", "u/alice/a", "u/alice/a/b")
TYPES = {"metrics": ("instrument", "visit", "detector"), "summary": ("instrument", "visit")}
VISITS = (12, 14)
DETECTORS = (0, 1)
PATTERNS = ("u", "u/alice/a", "u/alice/*", "u*", "u/alice/a/*", "x/*")

Key = tuple[str, str, int, int | None]  # (run, dataset type, visit, detector or None)
Item = tuple[str, int, int]  # (dataset type, visit, detector)
Refused = tuple[str, str]  # (ButlerError class name, regex its message matches)
Refusal = Refused | None  # None: success


def prepare_repository(admin: Any) -> None:
    """SimCam, visits 12 and 14 and the machine's dataset types, registered by the administrator
    (before `share_repository`, so that the users are granted the tables they need)."""
    from .. import DatasetType
    from ..instrument import SimCam

    admin.register_instrument(SimCam(), calibs=False)
    admin.insert_dimension_records("visit", SIMCAM_VISITS)
    for name, dims in TYPES.items():
        admin.register_dataset_type(DatasetType(name, dims, "StructuredData"))


# -- processes of users ---------------------------------------------------------------------------------
_REOPEN = "reopen"


def _serve(root: str, env: dict[str, str], conn: Any) -> None:
    """The loop of a `UserProcess`: ``(method, args, kwargs)`` in, the outcome out."""
    os.environ.update(env)
    from .. import Butler
    from ..errors import ButlerError
    from ._crash import forget_open_repositories

    try:
        butler = Butler(root, writeable=True)
        conn.send(("ok", butler.user))
    except BaseException:  # noqa: BLE001 - reported to the parent
        conn.send(("crashed", traceback.format_exc()))
        return
    while True:
        message = conn.recv()
        if message is None:
            return
        method, args, kwargs = message
        try:
            if method == _REOPEN:  # as a new process would: nothing cached
                forget_open_repositories(close=True)
                butler = Butler(root, writeable=True)
                conn.send(("ok", butler.user))
                continue
            conn.send(("ok", getattr(butler, method)(*args, **kwargs)))
        except ButlerError as err:
            conn.send(("refused", type(err).__name__, str(err)))
        except BaseException:  # noqa: BLE001 - reported to the parent
            conn.send(("crashed", traceback.format_exc()))


class UserProcess:
    """A process of one user (``env``: see `share_repository`) holding one writeable Butler of
    ``root`` for its whole life; `call` runs one public Butler method there."""

    def __init__(self, ctx: Any, root: str, env: dict[str, str], name: str) -> None:
        self.name = name
        self._conn, child = ctx.Pipe()
        self._process = ctx.Process(target=_serve, args=(root, env, child), name=name, daemon=True)
        self._process.start()
        child.close()
        self._user: str | None = None

    @property
    def user(self) -> str:
        """Who this process's Butler writes as (known once `wait_ready` returned)."""
        if self._user is None:
            raise AssertionError(f"user process {self.name} is not ready: call wait_ready first")
        return self._user

    def wait_ready(self) -> None:
        self._user = self._result(self._receive())

    def _receive(self) -> tuple[Any, ...]:
        if not self._conn.poll(120):
            raise AssertionError(f"user process {self.name} did not answer within 120 s")
        outcome: tuple[Any, ...] = self._conn.recv()
        return outcome

    def _result(self, outcome: tuple[Any, ...]) -> Any:
        if outcome[0] == "crashed":
            raise AssertionError(f"in user process {self.name}:\n{outcome[1]}")
        return outcome[1]

    def call(self, method: str, *args: Any, **kwargs: Any) -> Outcome:
        """``Outcome(value)``, or ``Outcome(error=class name, message=...)`` for a ButlerError."""
        self._conn.send((method, args, kwargs))
        outcome = self._receive()
        if outcome[0] == "refused":
            return Outcome(error=outcome[1], message=outcome[2])
        return Outcome(self._result(outcome))

    def start_reopen(self) -> None:
        """Open the repository afresh, with no cache (as a new process would); `wait_ready` waits."""
        self._conn.send((_REOPEN, (), {}))

    def close(self) -> None:
        try:
            self._conn.send(None)
        except OSError:
            pass
        self._process.join(timeout=30)
        if self._process.is_alive():
            self._process.kill()
            self._process.join()


@dataclass(frozen=True)
class Outcome:
    value: Any = None
    error: str | None = None
    message: str = ""


# -- the machine ------------------------------------------------------------------------------------------
def _data_id(dataset_type: str, visit: int, detector: int) -> dict[str, Any]:
    data_id: dict[str, Any] = {"instrument": "SimCam", "visit": visit}
    if "detector" in TYPES[dataset_type]:
        data_id["detector"] = detector
    return data_id


def _key(run: str, dataset_type: str, visit: int, detector: int) -> Key:
    return (run, dataset_type, visit, detector if "detector" in TYPES[dataset_type] else None)


def _key_of(ref: DatasetRef) -> Key:
    return (ref.run, ref.dataset_type.name, ref.data_id["visit"],
            ref.data_id["detector"] if "detector" in TYPES[ref.dataset_type.name] else None)


CLIENTS = ("alice", "alice2", "bob")
"""The user processes: two of the first user (same owner, separate caches) and one of the second."""

_clients = st.sampled_from(CLIENTS)
_types = st.sampled_from(sorted(TYPES))
_runs = st.sampled_from(RUNS)
_items = st.tuples(_types, st.sampled_from(VISITS), st.sampled_from(DETECTORS))
_values = st.dictionaries(st.sampled_from("xyz"), st.integers(-3, 3) | st.text("ab", max_size=2), max_size=2)


class RepositoryMachine(RuleBasedStateMachine):
    """Rules act through `clients`; invariants look through `admin` (see the module docstring)."""

    admin: Any = None
    clients: Mapping[str, UserProcess] = {}  # by name in CLIENTS

    refs = Bundle("refs")

    def __init__(self) -> None:
        super().__init__()
        self.datasets: dict[Key, tuple[Any, Any]] = {}  # key -> (dataset id, value)
        self.owners: dict[str, str] = {}  # run -> owner
        self.serial = 0

    @initialize()
    def start_empty(self) -> None:
        """Every example starts from an empty repository (the administrator removes every run) and
        processes that cache nothing, so that a failing example replays the same way."""
        self.admin.remove_runs("*", allow_foreign_run=True)
        for client in self.clients.values():
            client.start_reopen()
        for client in self.clients.values():
            client.wait_ready()

    # -- helpers ---------------------------------------------------------------------------------------
    def _value(self, drawn: dict[str, Any]) -> dict[str, Any]:
        self.serial += 1  # every write stores a different value: a stale read cannot pass for a fresh one
        return {"n": self.serial, **drawn}

    def _refusal(self, user: str, runs: Sequence[str], allow_foreign: bool) -> Refusal:
        """The error of a write or removal by ``user`` touching ``runs``, if one is not theirs."""
        if allow_foreign:
            return None
        owner = next((self.owners[r] for r in runs if self.owners.get(r, user) != user), None)
        if owner is None:
            return None
        return ("RunOwnershipError", re.escape(f"belongs to {owner!r}, not to you ({user!r})"))

    def _expect(self, outcome: Outcome, error: Refusal | list[Refused], what: str) -> None:
        """``outcome`` is a success (``error`` None) or the error class with a message matching it
        (any of them, if a list)."""
        if error is None:
            assert outcome.error is None, f"{what}: expected success, got {outcome.error}: {outcome.message}"
            return
        alternatives = error if isinstance(error, list) else [error]
        assert any(outcome.error == cls and re.search(pattern, outcome.message) for cls, pattern in alternatives), \
            f"{what}: expected {' or '.join(f'{c} matching {p!r}' for c, p in alternatives)}, got {outcome}"

    def _write(self, client: UserProcess, run: str, items: list[tuple[str, int, int, dict[str, Any]]],
               replace: bool, allow_foreign: bool) -> list[DatasetRef]:
        keys = [_key(run, t, v, d) for t, v, d, _ in items]
        values = [self._value(x) for *_, x in items]
        refusal = self._refusal(client.user, [run], allow_foreign)
        error: Refusal | list[Refused] = refusal
        if len(set(keys)) < len(keys):
            twice = ("ConflictError", "is given twice in one put_many")
            # Checked before the owner check inside the transaction; a process that still remembers
            # the run as its user's (handed over since) passes the early owner check: either error.
            error = twice if refusal is None else [refusal, twice]
        if error is None and not replace and any(k in self.datasets for k in keys):
            error = ("ConflictError", f"already exists in run {re.escape(repr(run))}; pass replace=True")
        outcome = client.call("put_many", [(value, t, _data_id(t, v, d)) for (t, v, d, _), value in zip(items, values)],
                              run=run, replace=replace, allow_foreign_run=allow_foreign)
        self._expect(outcome, error, f"{client.name} put_many into {run!r} {keys} replace={replace}")
        if error is not None:
            return []
        refs: list[DatasetRef] = outcome.value
        assert [_key_of(r) for r in refs] == keys
        self.owners.setdefault(run, client.user)
        for key, ref, value in zip(keys, refs, values):
            self.datasets[key] = (ref.id, value)
        return refs

    def _draw_runs(self, data: st.DataObject, most: int) -> list[str]:
        """1 to ``most`` run names or patterns: mostly of existing runs, so that reads find something."""
        pool = list(RUNS) + ([p for p in PATTERNS if p not in RUNS] if most == 1 else [])
        if self.owners and data.draw(st.integers(0, 3), label="existing runs only") > 0:
            pool = sorted(self.owners)
        return data.draw(st.lists(st.sampled_from(pool), min_size=1, max_size=most, unique=True), label="runs")

    def _current(self, refs: Sequence[DatasetRef]) -> list[DatasetRef]:
        """The refs (each once) of datasets the model holds: not removed nor replaced since."""
        ids = {i for i, _ in self.datasets.values()}
        return list({r.id: r for r in refs if r.id in ids}.values())

    # -- writes ------------------------------------------------------------------------------------------
    @rule(target=refs, who=_clients, run=_runs, item=_items, value=_values, replace=st.booleans(),
          allow_foreign=st.booleans())
    def put(self, who: str, run: str, item: Item, value: dict[str, Any], replace: bool, allow_foreign: bool) -> Any:
        client = self.clients[who]
        return multiple(*self._write(client, run, [(*item, value)], replace, allow_foreign))

    @precondition(lambda self: self.owners)
    @rule(target=refs, data=st.data(), who=_clients, item=_items, value=_values, replace=st.booleans(),
          allow_foreign=st.booleans())
    def put_foreign(self, data: st.DataObject, who: str, item: Item, value: dict[str, Any], replace: bool,
                    allow_foreign: bool) -> Any:
        """A write into a run of another user: refused, changing nothing, unless allow_foreign_run."""
        client = self.clients[who]
        foreign = sorted(r for r, owner in self.owners.items() if owner != client.user)
        if not foreign:
            return multiple()
        run = data.draw(st.sampled_from(foreign), label="run")
        return multiple(*self._write(client, run, [(*item, value)], replace, allow_foreign))

    @rule(target=refs, who=_clients, run=_runs, items=st.lists(st.tuples(_items, _values), min_size=2, max_size=4),
          replace=st.booleans())
    def put_many(self, who: str, run: str, items: list[tuple[Item, dict[str, Any]]], replace: bool) -> Any:
        client = self.clients[who]
        return multiple(*self._write(client, run, [(*item, value) for item, value in items], replace, False))

    @rule(who=_clients, refs=st.lists(refs, min_size=1, max_size=3), allow_foreign=st.booleans())
    def remove_refs(self, who: str, refs: list[DatasetRef], allow_foreign: bool) -> None:
        """Remove refs returned by earlier writes, some of them replaced or removed since."""
        client = self.clients[who]
        self._remove(client, refs, allow_foreign)

    @precondition(lambda self: self.owners)
    @rule(data=st.data(), dataset_type=_types, allow_foreign=st.booleans())
    def remove_queried(self, data: st.DataObject, dataset_type: str, allow_foreign: bool) -> None:
        """One process queries, another (or the same) removes some of what it found."""
        finder = self.clients[data.draw(_clients, label="finder")]
        found = self._query(finder, dataset_type, self._draw_runs(data, 1)[0])
        if found:
            chosen = data.draw(st.lists(st.sampled_from(found), min_size=1, unique_by=lambda r: r.id), label="chosen")
            remover = self.clients[data.draw(_clients, label="remover")]
            self._remove(remover, chosen, allow_foreign)

    def _remove(self, client: UserProcess, refs: list[DatasetRef], allow_foreign: bool) -> None:
        current = self._current(refs)
        error = self._refusal(client.user, sorted({r.run for r in current}), allow_foreign)
        outcome = client.call("remove", refs, allow_foreign_run=allow_foreign)
        self._expect(outcome, error, f"{client.name} remove {[_key_of(r) for r in refs]}")
        if error is None:
            assert outcome.value == len(current), (outcome, current)
            for ref in current:
                del self.datasets[_key_of(ref)]

    @precondition(lambda self: self.owners)
    @rule(who=_clients, pattern=st.sampled_from(PATTERNS), allow_foreign=st.booleans())
    def remove_runs(self, who: str, pattern: str, allow_foreign: bool) -> None:
        client = self.clients[who]
        matched = sorted(r for r in self.owners if fnmatch.fnmatchcase(r, pattern))
        error = self._refusal(client.user, matched, allow_foreign)
        outcome = client.call("remove_runs", pattern, allow_foreign_run=allow_foreign)
        self._expect(outcome, error, f"{client.name} remove_runs {pattern!r} (runs {self.owners})")
        if error is None:
            assert outcome.value == matched
            for run in matched:
                del self.owners[run]
            self.datasets = {k: v for k, v in self.datasets.items() if k[0] not in matched}

    @precondition(lambda self: self.owners)
    @rule(who=_clients, run=_runs, new_owner=_clients)
    def chown_run(self, who: str, run: str, new_owner: str) -> None:
        client = self.clients[who]
        new_owner = self.clients[new_owner].user
        error: Refusal
        if run not in self.owners:
            error = ("CollectionError", f"{re.escape(repr(run))} does not exist")
        else:
            error = self._refusal(client.user, [run], False)
        outcome = client.call("chown_run", run, new_owner)
        self._expect(outcome, error, f"{client.name} chown_run {run!r} to {new_owner!r} (owners {self.owners})")
        if error is None:
            self.owners[run] = new_owner

    # -- reads -------------------------------------------------------------------------------------------
    @precondition(lambda self: self.owners)
    @rule(data=st.data(), who=_clients, item=_items)
    def get(self, data: st.DataObject, who: str, item: Item) -> None:
        """Get by data ID through a search path of runs: the first run holding it wins."""
        client = self.clients[who]
        search = self._draw_runs(data, 3)
        dataset_type, visit, detector = item
        outcome = client.call("get", dataset_type, _data_id(dataset_type, visit, detector), collections=search)
        what = f"{client.name} get {item} in {search}"
        missing = [r for r in search if r not in self.owners]
        if missing:
            self._expect(outcome, ("CollectionError", f"collection {re.escape(repr(missing[0]))} does not exist"), what)
            return
        found = [self.datasets[k] for r in search if (k := _key(r, dataset_type, visit, detector)) in self.datasets]
        exists = client.call("exists", dataset_type, _data_id(dataset_type, visit, detector), collections=search)
        assert exists == Outcome(bool(found)), (what, exists)
        if found:
            self._expect(outcome, None, what)
            assert outcome.value == found[0][1], (what, outcome.value, found[0])
        else:
            self._expect(outcome, ("DatasetNotFoundError", f"no {dataset_type!r} for .* in collections"), what)

    @rule(who=_clients, ref=refs)
    def get_ref(self, who: str, ref: DatasetRef) -> None:
        client = self.clients[who]
        outcome = client.call("get", ref)
        entry = self.datasets.get(_key_of(ref))
        if entry is not None and entry[0] == ref.id:
            self._expect(outcome, None, f"{client.name} get {ref}")
            assert outcome.value == entry[1]
        else:
            self._expect(outcome, ("DatasetNotFoundError", "is not in the repository"),
                         f"{client.name} get {ref} (replaced or removed)")

    @precondition(lambda self: self.owners)
    @rule(data=st.data(), who=_clients, dataset_type=_types)
    def query(self, data: st.DataObject, who: str, dataset_type: str) -> None:
        self._query(self.clients[who], dataset_type, self._draw_runs(data, 1)[0])

    def _query(self, client: UserProcess, dataset_type: str, pattern: str) -> list[DatasetRef]:
        """Refs of a type in a run or glob of runs, checked against the model."""
        outcome = client.call("query_datasets", dataset_type, collections=pattern)
        what = f"{client.name} query_datasets {dataset_type!r} in {pattern!r}"
        matched = [r for r in self.owners if fnmatch.fnmatchcase(r, pattern)]
        if not matched:
            absent = (f"no collection matches the pattern {re.escape(repr(pattern))}" if "*" in pattern
                      else f"collection {re.escape(repr(pattern))} does not exist")
            self._expect(outcome, ("CollectionError", absent), what)
            return []
        self._expect(outcome, None, what)
        expected = {(k, i) for k, (i, _) in self.datasets.items() if k[0] in matched and k[1] == dataset_type}
        refs: list[DatasetRef] = outcome.value
        assert {(_key_of(r), r.id) for r in refs} == expected, what
        return refs

    # -- invariants -----------------------------------------------------------------------------------------
    @invariant()
    def check_repository(self) -> None:
        """The administrator's Butler sees exactly the model; nothing is damaged, left over or pending."""
        admin = self.admin
        runs = admin.query_collections(types=["RUN"])
        assert runs == sorted(self.owners), (runs, self.owners)
        assert {r: admin.collection_info(r).owner for r in runs} == self.owners
        found = {}
        for dataset_type in TYPES:
            if runs:
                for ref in admin.query_datasets(dataset_type, collections=runs, find_first=False):
                    found[_key_of(ref)] = ref
        assert {k: r.id for k, r in found.items()} == {k: i for k, (i, _) in self.datasets.items()}
        for key, ref in found.items():
            assert admin.get(ref) == self.datasets[key][1], key
        assert admin.verify() == []
        assert admin.registry.journal.pending() == []


def bind_machine(admin: Any, clients: Mapping[str, UserProcess]) -> type[RepositoryMachine]:
    """The machine class for the repository of ``admin``, acting through ``clients`` (started, one
    per name in `CLIENTS`)."""
    assert sorted(clients) == sorted(CLIENTS), sorted(clients)
    return type("RepositoryMachine", (RepositoryMachine,), {"admin": admin, "clients": dict(clients)})
