"""Run ownership (issue 11, item 3): who owns a run on each backend, every write and removal of
somebody else's run refused inside the transaction that would make it, and hand-over.

On SQLite the identity is the OS account, overridden by ``$BUTLER_USER``; on PostgreSQL and
MariaDB it is the database role, which ``$BUTLER_USER`` cannot change: those tests create two
login roles (``butler_alice``, ``butler_bob``) and run each user in a process of its own that
connects as that role (``PGUSER``; a ``~/.my.cnf`` per user for MariaDB) to one repository whose
configuration names no user, as a shared repository would be configured.
"""

from __future__ import annotations

import json
import multiprocessing
import os
import pwd
import traceback
from typing import Any

import pytest
import sqlalchemy as sa
from click.testing import CliRunner

from butler import Butler, DatasetType
from butler.cli import cli
from butler.errors import ButlerError, CollectionError, InvalidNameError, RunOwnershipError
from butler.testing import SIMCAM_VISITS, RepoFactory, backend_url, run_concurrently, share_repository, snapshot_repo
from butler.testing._stateful import UserProcess

ALICE, BOB = "butler_alice", "butler_bob"
RUN = "u/shared/run"


# -- helpers ------------------------------------------------------------------------------------------
def _setup(butler: Butler) -> Butler:
    """SimCam, visits 12 and 14 and the 'metrics' type (registered by the repository's creator)."""
    from butler.instrument import SimCam

    butler.register_instrument(SimCam(), calibs=False)
    butler.insert_dimension_records("visit", SIMCAM_VISITS)
    butler.register_dataset_type(DatasetType("metrics", ("instrument", "visit", "detector"), "StructuredData"))
    return butler


def _put(butler: Butler, run: str, detectors: Any, by: str, **kwargs: Any) -> list:
    return butler.put_many([({"by": by, "d": d}, "metrics", {"instrument": "SimCam", "visit": 12, "detector": d})
                            for d in detectors], run=run, **kwargs)


def _data_files(root: str) -> set[str]:
    out = set()
    for dirpath, dirnames, names in os.walk(root):
        if dirpath == root and ".locks" in dirnames:
            dirnames.remove(".locks")
        out.update(os.path.relpath(os.path.join(dirpath, n), root) for n in names if not n.startswith("butler."))
    return out


def _cli(*args: str, code: int = 0):
    result = CliRunner().invoke(cli, list(args))
    assert result.exit_code == code, (result.exit_code, result.output, result.exception)
    return result


# -- SQLite: the OS account, and $BUTLER_USER -----------------------------------------------------------
@pytest.fixture
def sqlite_repo(tmp_path):
    factory = RepoFactory(str(tmp_path), "sqlite")
    yield _setup(factory())
    factory.cleanup()


def test_sqlite_identity_is_the_os_account_not_the_login_variables(sqlite_repo, monkeypatch):
    account = pwd.getpwuid(os.geteuid()).pw_name
    monkeypatch.delenv("BUTLER_USER")
    for name in ("LOGNAME", "USER", "LNAME", "USERNAME"):  # what getpass.getuser() would read
        monkeypatch.setenv(name, "mallory")
    butler = Butler(sqlite_repo.root, run="u/me/run")
    assert butler.user == account
    _put(butler, "u/me/run", [0], "me")
    assert butler.collection_info("u/me/run").owner == account


def test_butler_user_overrides_the_os_account_on_sqlite(sqlite_repo, monkeypatch):
    monkeypatch.setenv("BUTLER_USER", ALICE)
    butler = Butler(sqlite_repo.root, run=RUN)
    assert butler.user == ALICE
    _put(butler, RUN, [0], "alice")
    assert butler.collection_info(RUN).owner == ALICE
    butler.register_run("u/alice/empty")
    assert butler.collection_info("u/alice/empty").owner == ALICE


def test_butler_user_decides_on_sqlite(sqlite_repo, monkeypatch):
    """$BUTLER_USER names the user on SQLite: bob is refused in alice's run, and has his own."""
    root = sqlite_repo.root
    monkeypatch.setenv("BUTLER_USER", "alice")
    alice = Butler(root, run="u/alice/run1")
    alice.put({"by": "alice"}, "metrics", instrument="SimCam", visit=12, detector=0)
    assert alice.collection_info("u/alice/run1").owner == "alice"
    monkeypatch.setenv("BUTLER_USER", "bob")
    bob = Butler(root, run="u/alice/run1")
    before = snapshot_repo(bob)
    with pytest.raises(RunOwnershipError, match=r"'u/alice/run1' belongs to 'alice'.*'bob'.*allow_foreign_run") as info:
        bob.put({"by": "bob"}, "metrics", instrument="SimCam", visit=12, detector=1)
    assert isinstance(info.value, PermissionError)
    with pytest.raises(RunOwnershipError):
        bob.put_many([({"by": "bob"}, "metrics", {"instrument": "SimCam", "visit": 12, "detector": 2})])
    with pytest.raises(RunOwnershipError):
        Butler(root, writeable=True).put({"by": "bob"}, "metrics", instrument="SimCam", visit=12, detector=1,
                                         run="u/alice/run1")
    assert snapshot_repo(bob) == before
    ref = bob.put({"by": "bob"}, "metrics", instrument="SimCam", visit=12, detector=1, allow_foreign_run=True)
    assert ref.run == "u/alice/run1"
    assert bob.get(ref) == {"by": "bob"}
    assert bob.collection_info("u/alice/run1").owner == "alice"  # the override does not change the owner
    # Bob's own runs are his.
    mine = Butler(root, run="u/bob/run1")
    mine.put({"by": "bob"}, "metrics", instrument="SimCam", visit=12, detector=1)
    assert mine.collection_info("u/bob/run1").owner == "bob"
    # And alice is again welcome in her run.
    monkeypatch.setenv("BUTLER_USER", "alice")
    assert Butler(root, run="u/alice/run1").put({"by": "alice"}, "metrics", instrument="SimCam", visit=14,
                                                 detector=0).run == "u/alice/run1"


def test_another_user_is_refused_every_write_and_removal(sqlite_repo, monkeypatch, tmp_path):
    root = sqlite_repo.root
    monkeypatch.setenv("BUTLER_USER", ALICE)
    refs = _put(Butler(root, writeable=True), RUN, range(3), "alice")
    monkeypatch.setenv("BUTLER_USER", BOB)
    bob = Butler(root, run=RUN)
    source = tmp_path / "bob.json"
    source.write_text('{"by": "bob"}')
    attempts = {
        "put": lambda **kw: bob.put({"by": "bob"}, "metrics", instrument="SimCam", visit=12, detector=5, **kw),
        "put replace": lambda **kw: bob.put({"by": "bob"}, "metrics", refs[0].data_id, replace=True, **kw),
        "put_many": lambda **kw: _put(bob, RUN, [6, 7], "bob", **kw),
        "ingest move": lambda **kw: bob.ingest("metrics", [(source, {"instrument": "SimCam", "visit": 12,
                                                                     "detector": 8})], transfer="move", **kw),
        "remove": lambda **kw: bob.remove(refs[1:2], **kw),
        "remove_runs": lambda **kw: bob.remove_runs(RUN, **kw),
    }
    before = snapshot_repo(bob)
    for name, attempt in attempts.items():
        with pytest.raises(RunOwnershipError) as info:
            attempt()
        assert isinstance(info.value, PermissionError), name
        assert f"run {RUN!r} belongs to {ALICE!r}, not to you ({BOB!r})" in str(info.value), name
        assert "allow_foreign_run=True" in str(info.value), name
        assert snapshot_repo(bob) == before, name
    assert source.exists()  # the refused move did not take the source
    with pytest.raises(RunOwnershipError, match="refusing to register it as yours"):
        bob.register_run(RUN)
    assert snapshot_repo(bob) == before

    # allow_foreign_run lets each through, and the run stays alice's.
    for name, attempt in attempts.items():
        attempt(allow_foreign_run=True)
        if name != "remove_runs":
            assert bob.collection_info(RUN).owner == ALICE, name
    assert not source.exists()
    assert bob.query_collections() == []
    assert _data_files(root) == set()


def test_removal_of_refs_from_several_runs_needs_all_of_them(sqlite_repo, monkeypatch):
    root = sqlite_repo.root
    monkeypatch.setenv("BUTLER_USER", ALICE)
    theirs = _put(Butler(root, writeable=True), RUN, [0], "alice")
    monkeypatch.setenv("BUTLER_USER", BOB)
    bob = Butler(root, writeable=True)
    mine = _put(bob, "u/bob/run", [1], "bob")
    before = snapshot_repo(bob)
    with pytest.raises(RunOwnershipError, match=f"{RUN!r} belongs to {ALICE!r}"):
        bob.remove(mine + theirs)
    with pytest.raises(RunOwnershipError, match=f"{RUN!r} belongs to {ALICE!r}"):
        bob.remove_runs(["u/bob/run", RUN])
    assert snapshot_repo(bob) == before
    assert bob.remove(mine) == 1  # his own run's datasets are his to remove
    assert bob.remove_runs("u/bob/*") == ["u/bob/run"]


def test_chown_run_hands_a_run_over(sqlite_repo, monkeypatch, tmp_path):
    root = sqlite_repo.root
    source = tmp_path / "alice.json"
    source.write_text('{"by": "alice"}')
    monkeypatch.setenv("BUTLER_USER", ALICE)
    alice = Butler(root, run=RUN)
    refs = _put(alice, RUN, [0, 1], "alice")  # alice's Butler now remembers the run as checked
    monkeypatch.setenv("BUTLER_USER", BOB)
    bob = Butler(root, writeable=True)
    before = snapshot_repo(bob)
    with pytest.raises(RunOwnershipError, match=f"belongs to {ALICE!r}, not to you .*only its owner can hand it over"):
        bob.chown_run(RUN, BOB)
    assert snapshot_repo(bob) == before

    monkeypatch.setenv("BUTLER_USER", ALICE)
    Butler(root, writeable=True).chown_run(RUN, BOB)
    assert alice.collection_info(RUN).owner == BOB
    before = snapshot_repo(bob)
    # The old owner is refused now, by a Butler that checked the run before the hand-over too
    # (its remembered check passes; the check inside the transaction refuses).
    for attempt in (lambda: _put(alice, RUN, [2], "alice"),
                    lambda: alice.ingest("metrics", [(source, {"instrument": "SimCam", "visit": 12, "detector": 8})],
                                         transfer="move"),
                    lambda: alice.remove(refs),
                    lambda: alice.remove_runs(RUN),
                    lambda: alice.chown_run(RUN, ALICE)):
        with pytest.raises(RunOwnershipError, match=f"belongs to {BOB!r}, not to you \\({ALICE!r}\\)"):
            attempt()
        assert snapshot_repo(bob) == before
    assert source.exists()
    # The new owner writes, removes and can hand it back.
    monkeypatch.setenv("BUTLER_USER", BOB)
    _put(bob, RUN, [2], "bob")
    assert bob.remove(refs[:1]) == 1
    bob.chown_run(RUN, ALICE)
    monkeypatch.setenv("BUTLER_USER", ALICE)
    assert [r.data_id["detector"] for r in _put(alice, RUN, [3], "alice")] == [3]


def test_chown_run_refuses_bad_new_owners_and_non_runs(sqlite_repo, monkeypatch):
    monkeypatch.setenv("BUTLER_USER", ALICE)
    butler = Butler(sqlite_repo.root, run=RUN)
    _put(butler, RUN, [0], "alice")
    butler.register_collection("u/alice/tagged", "TAGGED")
    before = snapshot_repo(butler)
    for bad in ("", " bob", "x" * 65, None):
        with pytest.raises(InvalidNameError, match="invalid new owner"):
            butler.chown_run(RUN, bad)
    with pytest.raises(CollectionError, match="'u/alice/tagged' is a TAGGED collection, not a RUN"):
        butler.chown_run("u/alice/tagged", BOB)
    with pytest.raises(CollectionError, match="does not exist"):
        butler.chown_run("u/alice/nope", BOB)
    assert snapshot_repo(butler) == before


def test_cli_chown_run_query_collections_and_remove_runs(sqlite_repo, monkeypatch):
    root = sqlite_repo.root
    monkeypatch.setenv("BUTLER_USER", ALICE)
    _put(Butler(root, writeable=True), RUN, [0], "alice")
    rows = json.loads(_cli("query-collections", root, "--type", "RUN", "-f", "json").stdout)
    assert rows == [{"name": RUN, "type": "RUN", "owner": ALICE, "children": None}]

    monkeypatch.setenv("BUTLER_USER", BOB)
    result = _cli("chown-run", root, RUN, BOB, code=2)
    assert result.stderr.startswith("error: ") and "only its owner can hand it over" in result.stderr
    assert "Traceback" not in result.output
    result = _cli("remove-runs", root, RUN, "--yes", code=2)
    assert f"belongs to {ALICE!r}, not to you ({BOB!r})" in result.stderr and "--allow-foreign-run" in result.stderr
    assert Butler(root).query_collections() == [RUN]

    monkeypatch.setenv("BUTLER_USER", ALICE)
    assert _cli("chown-run", root, RUN, BOB).stdout == f"run {RUN!r} now belongs to {BOB!r} (was {ALICE!r})\n"
    assert Butler(root).collection_info(RUN).owner == BOB
    assert "removed 1 run(s) and 1 dataset(s)" in _cli("remove-runs", root, RUN, "--yes", "--allow-foreign-run").stdout
    assert Butler(root).query_collections() == []


def test_the_identity_is_what_each_backend_can_vouch_for(repo_factory, monkeypatch):
    """Conformance on every backend: the owner recorded is `Butler.user`; $BUTLER_USER changes it
    on SQLite only (on servers the role in the URL decides)."""
    butler = _setup(repo_factory())
    monkeypatch.setenv("BUTLER_USER", ALICE)
    fresh = Butler(butler.root, run=RUN)
    _put(fresh, RUN, [0], "first")
    role = sa.engine.make_url(backend_url(repo_factory.backend) or "sqlite://").username
    expected = role if butler.registry.db.authenticates else ALICE
    assert fresh.user == expected and fresh.collection_info(RUN).owner == expected
    monkeypatch.setenv("BUTLER_USER", BOB)
    if butler.registry.db.authenticates:
        assert fresh.user == role
        _put(fresh, RUN, [1], "same role")  # still the run's owner: the variable changed nothing
    else:
        assert fresh.user == BOB
        with pytest.raises(RunOwnershipError):
            _put(fresh, RUN, [1], "somebody else")


# -- several users in processes of their own, on every backend ----------------------------------------
@pytest.fixture
def shared_repo(repo_factory, tmp_path):
    """A repository made by an administrator, used by alice and bob: (admin Butler, env of each user)
    (`butler.testing.share_repository`: on servers each user is a login role of their own)."""
    admin = _setup(repo_factory())
    return admin, share_repository(admin, str(tmp_path), (ALICE, BOB))


def _context() -> Any:
    if "forkserver" in multiprocessing.get_all_start_methods():
        ctx = multiprocessing.get_context("forkserver")
        ctx.set_forkserver_preload(["butler", "sqlalchemy", __name__])
        return ctx
    return multiprocessing.get_context("spawn")


def _as_user(env: dict[str, str], op: str, args: tuple, gate: Any, barrier: Any, queue: Any) -> None:
    """Run ``OPS[op](*args)`` as the user of ``env``; a ButlerError is a result ("refused"), not a failure.

    ``gate`` (a barrier or None) forces an interleaving: every process passes ``RunAccess.check``
    (the check before the write transaction) before any of them starts its transaction.
    """
    os.environ.update(env)
    try:
        if gate is not None:
            from butler._registration import RunAccess

            original = RunAccess.check

            def checked_then_wait(self: RunAccess, run: str, allow_foreign_run: bool) -> Any:
                result = original(self, run, allow_foreign_run)
                gate.wait(timeout=60)
                return result

            RunAccess.check = checked_then_wait  # type: ignore[method-assign]
        barrier.wait(timeout=60)
        try:
            payload = OPS[op](*args)
        except ButlerError as err:
            payload = {"refused": type(err).__name__, "message": str(err)}
        queue.put(("ok", os.getpid(), payload))
    except BaseException:  # noqa: BLE001 - report everything to the parent
        queue.put(("error", os.getpid(), traceback.format_exc()))


def _op_create(root: str, run: str, detectors: list[int], by: str) -> dict[str, Any]:
    butler = Butler(root, writeable=True)
    refs = _put(butler, run, detectors, by)
    return {"user": butler.user, "owner": butler.collection_info(run).owner, "n": len(refs)}


def _op_try_everything(root: str, run: str, source: str) -> dict[str, Any]:
    """Every write and removal of ``run`` by somebody who does not own it: each outcome."""
    butler = Butler(root, writeable=True)
    refs = butler.query_datasets("metrics", collections=run)
    attempts = {
        "put": lambda: butler.put({"x": 1}, "metrics", instrument="SimCam", visit=12, detector=7, run=run),
        "ingest": lambda: butler.ingest("metrics", [(source, {"instrument": "SimCam", "visit": 12, "detector": 8})],
                                        run=run, transfer="move"),
        "remove": lambda: butler.remove(refs),
        "remove_runs": lambda: butler.remove_runs(run),
        "chown_run": lambda: butler.chown_run(run, butler.user),
        "register_run": lambda: butler.register_run(run),
    }
    outcomes = {"user": butler.user}
    for name, attempt in attempts.items():
        try:
            attempt()
            outcomes[name] = "done"
        except ButlerError as err:
            outcomes[name] = f"{type(err).__name__}: {err}"
    return outcomes


def _op_chown(root: str, run: str, new_owner: str) -> str:
    Butler(root, writeable=True).chown_run(run, new_owner)
    return "done"


OPS = {"create": _op_create, "try_everything": _op_try_everything, "chown": _op_chown}


def _run_as(ctx: Any, envs: dict[str, dict[str, str]], user: str, op: str, *args: Any) -> Any:
    return run_concurrently(ctx, _as_user, [(envs[user], op, args, None)])[0][2]


def test_users_in_their_own_processes(shared_repo, tmp_path):
    """Alice's run (owner: her role or account, whatever $BUTLER_USER says on servers) refuses
    every write and removal by bob, with nothing changed; after she hands it over, bob writes and
    alice is refused."""
    admin, envs = shared_repo
    ctx = _context()
    created = _run_as(ctx, envs, ALICE, "create", admin.root, RUN, [0, 1, 2], "alice")
    assert created == {"user": ALICE, "owner": ALICE, "n": 3}

    source = tmp_path / "bob.json"
    source.write_text('{"by": "bob"}')
    before = snapshot_repo(admin)
    outcomes = _run_as(ctx, envs, BOB, "try_everything", admin.root, RUN, str(source))
    assert outcomes.pop("user") == BOB
    for name, outcome in outcomes.items():
        assert outcome.startswith(f"RunOwnershipError: run {RUN!r} belongs to {ALICE!r}, not to you ({BOB!r})"), \
            (name, outcome)
    assert snapshot_repo(admin) == before and source.exists()

    if admin.registry.db.authenticates:  # the administrator can read the server's roles
        with pytest.raises(InvalidNameError, match="has no role of that name"):
            admin.chown_run(RUN, "butler_nobody_by_that_name")
        assert snapshot_repo(admin) == before
    assert _run_as(ctx, envs, ALICE, "chown", admin.root, RUN, BOB) == "done"
    assert _run_as(ctx, envs, BOB, "create", admin.root, RUN, [3], "bob") == {"user": BOB, "owner": BOB, "n": 1}
    refused = _run_as(ctx, envs, ALICE, "create", admin.root, RUN, [4], "alice")
    assert refused["refused"] == "RunOwnershipError" and f"belongs to {BOB!r}" in refused["message"]
    admin.refresh()
    assert sorted((r.data_id["detector"], admin.get(r)["by"]) for r in admin.query_datasets("metrics", collections=RUN)) \
        == [(0, "alice"), (1, "alice"), (2, "alice"), (3, "bob")]


def test_two_users_racing_to_create_a_run(shared_repo):
    """Both check that the run does not exist yet (forced: neither starts its transaction before
    both checked), then both write: exactly one creates the run, the other is refused and leaves
    nothing behind."""
    admin, envs = shared_repo
    ctx = _context()
    gate = ctx.Barrier(2)
    results = run_concurrently(ctx, _as_user, [
        (envs[ALICE], "create", (admin.root, RUN, [0, 1, 2], "alice"), gate),
        (envs[BOB], "create", (admin.root, RUN, [3, 4, 5], "bob"), gate),
    ])
    payloads = [r[2] for r in results]
    won = [p for p in payloads if "owner" in p]
    lost = [p for p in payloads if "refused" in p]
    assert len(won) == 1 and len(lost) == 1, payloads
    winner = won[0]["owner"]
    loser = BOB if winner == ALICE else ALICE
    assert won[0] == {"user": winner, "owner": winner, "n": 3}
    assert lost[0]["refused"] == "RunOwnershipError"
    assert f"run {RUN!r} belongs to {winner!r}, not to you ({loser!r})" in lost[0]["message"]
    admin.refresh()
    refs = admin.query_datasets("metrics", collections=RUN)
    assert {admin.get(r)["by"] for r in refs} == {winner.removeprefix("butler_")}
    assert len(refs) == 3 and admin.collection_info(RUN).owner == winner
    assert len(_data_files(admin.root)) == 3  # the loser's staged files are gone
    assert admin.verify() == []


def test_a_stale_cache_never_skips_the_owner_check_of_a_removal(shared_repo):
    """Alice's process removed her run; bob's new run may get its id (SQLite reuses the highest).
    Alice's process, which remembered that id as her removed run, must still be refused bob's
    datasets (it used to skip the check, taking the run for one already removed, and delete them)."""
    admin, envs = shared_repo
    ctx = multiprocessing.get_context("spawn")
    alice, bob = UserProcess(ctx, admin.root, envs[ALICE], "alice"), UserProcess(ctx, admin.root, envs[BOB], "bob")
    try:
        alice.wait_ready()
        bob.wait_ready()
        items = [({"d": d}, "metrics", {"instrument": "SimCam", "visit": 12, "detector": d}) for d in (0, 1)]
        assert alice.call("put_many", items, run="u/alice/gone").error is None
        assert alice.call("remove_runs", "u/alice/gone").value == ["u/alice/gone"]
        refs = bob.call("put_many", items, run="u/bob/run").value
        before = snapshot_repo(admin)
        refused = alice.call("remove", refs)
        assert refused.error == "RunOwnershipError", refused
        assert f"run 'u/bob/run' belongs to {BOB!r}, not to you ({ALICE!r})" in refused.message
        assert snapshot_repo(admin) == before
        assert alice.call("remove", refs, allow_foreign_run=True).value == 2
    finally:
        alice.close()
        bob.close()
