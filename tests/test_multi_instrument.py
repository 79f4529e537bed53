"""Two instruments in one repository: shared bands, joint queries, packed IDs that never collide (issue 7)."""

from __future__ import annotations

import numpy as np
import pytest

from butler import Butler


@pytest.fixture
def joint_repo(repo_factory):
    from butler.instrument import HexCam, SimCam

    butler = Butler(repo_factory().root, writeable=True)
    butler.register_instrument(SimCam())
    butler.register_instrument(HexCam())
    butler.insert_dimension_records("day_obs", [{"instrument": i, "id": 20261124} for i in ("SimCam", "HexCam")])
    butler.insert_dimension_records("visit", [
        {"instrument": "SimCam", "id": 12, "physical_filter": "SimCam-r", "day_obs": 20261124},
        {"instrument": "SimCam", "id": 13, "physical_filter": "SimCam-g", "day_obs": 20261124},
        {"instrument": "HexCam", "id": 12, "physical_filter": "HX-R2", "day_obs": 20261124},
        {"instrument": "HexCam", "id": 99, "physical_filter": "HX-N921", "day_obs": 20261124},
    ])
    return butler


def test_shared_band_selects_both_instruments(joint_repo):
    rows = joint_repo.query_data_ids(["visit", "detector"], where="band = 'r'")
    by_inst = {}
    for r in rows:
        by_inst.setdefault(r["instrument"], set()).add(r["visit"])
    assert by_inst == {"SimCam": {12}, "HexCam": {12}}
    assert sum(1 for r in rows if r["instrument"] == "HexCam") == 16
    assert sum(1 for r in rows if r["instrument"] == "SimCam") == 9
    # each instrument keeps its own calib chain and camera
    assert joint_repo.get("camera", instrument="HexCam").name == "HexCam"
    assert joint_repo.get_chain("HexCam/calib") == ["HexCam/calib/unbounded"]


def test_joint_packer_ids_never_collide(joint_repo):
    rows = joint_repo.query_data_ids(["visit", "detector"])
    packer = joint_repo.packer("instrument_visit_detector")
    data = {k: np.array([r[k] for r in rows]) for k in ("instrument", "visit", "detector")}
    ids = packer.pack(data)
    assert len(set(ids.tolist())) == len(rows)  # SimCam visit 12 and HexCam visit 12 differ
    back = packer.unpack(ids)
    assert back["instrument"].tolist() == data["instrument"].tolist()
    assert back["visit"].tolist() == data["visit"].tolist()
    # at the extremes of both instruments' ranges, too
    extremes = {"instrument": np.array(["SimCam", "HexCam"] * 2),
                "visit": np.array([0, 0, 2**20 - 1, 9_999_999]), "detector": np.array([0, 0, 15, 255])}
    assert len(set(packer.pack(extremes).tolist())) == 4
    # indices are stable: the same in a new Butler, and per repository
    again = Butler(joint_repo.root).packer("instrument_visit_detector")
    assert again.pack({"instrument": "HexCam", "visit": 12, "detector": 100}) == packer.pack(
        {"instrument": "HexCam", "visit": 12, "detector": 100})
    with pytest.raises(ValueError, match="not one this packer was built with"):
        packer.pack({"instrument": "NoCam", "visit": 1, "detector": 1})


# -- instrument indices under concurrency ------------------------------------------------------------
N_PROCESSES = 10
CAMERAS = ["CamA", "CamB", "CamC", "CamD"]


def _register_more(butler: Butler, tmp_path, names: list[str]) -> list[str]:
    """Register SimCam children named ``names`` (camera YAMLs that say ``inherits: SimCam``)."""
    from butler.instrument import load_instrument

    for name in names:
        path = tmp_path / f"{name}.yaml"
        path.write_text(f"inherits: SimCam\nname: {name}\n")
        butler.register_instrument(load_instrument(path), calibs=False)
    return names


def _register_cameras(butler: Butler, tmp_path, names=CAMERAS) -> list[str]:
    """SimCam, HexCam and SimCam children named ``names`` (no indices assigned yet)."""
    from butler.instrument import HexCam, SimCam

    butler.register_instrument(SimCam(), calibs=False)
    butler.register_instrument(HexCam(), calibs=False)
    return ["SimCam", "HexCam", *_register_more(butler, tmp_path, names)]


def _index_rows(butler: Butler) -> dict[str, str]:
    import sqlalchemy as sa

    t = butler.registry.schema.attributes
    with butler.registry.db.transaction() as conn:
        return {k: v for k, v in conn.execute(sa.select(t.c.name, t.c.value)).all() if k.startswith("instrument_index")}


def _allocate(root: str, names: list[str], barrier, queue) -> None:
    """One of many processes asking for instrument indices at the same moment."""
    import os
    import traceback

    from butler._multi_instrument import instrument_index

    try:
        butler = Butler(root)  # read-only: indices are registry bookkeeping, assigned on first use
        barrier.wait(timeout=60)
        queue.put(("ok", os.getpid(), {name: instrument_index(butler.registry, name) for name in names}))
    except BaseException:  # noqa: BLE001 - report everything to the parent
        queue.put(("error", os.getpid(), traceback.format_exc()))


def _context():
    import multiprocessing

    if "forkserver" in multiprocessing.get_all_start_methods():
        ctx = multiprocessing.get_context("forkserver")
        ctx.set_forkserver_preload(["butler", "butler._multi_instrument", "sqlalchemy", __name__])
        return ctx
    return multiprocessing.get_context("spawn")


def test_concurrent_processes_agree_on_instrument_indices(repo_factory, tmp_path):
    """10 processes ask at once for overlapping sets of names: one index per name, one name per index."""
    import random

    butler = repo_factory()
    names = _register_cameras(butler, tmp_path)
    rng = random.Random(7)
    asks = [rng.sample(names, k=3 + i % 3) for i in range(N_PROCESSES)]  # each name asked by several
    assert set().union(*asks) == set(names)
    from butler.testing import run_concurrently

    results = run_concurrently(_context(), _allocate, [(butler.root, ask) for ask in asks])
    seen: dict[str, set[int]] = {}
    for _, _, got in results:
        for name, index in got.items():
            seen.setdefault(name, set()).add(index)
    assert all(len(v) == 1 for v in seen.values()), seen  # every process got the same index for a name
    final = {name: v.pop() for name, v in seen.items()}
    assert sorted(final.values()) == list(range(len(names)))  # no index shared, none skipped
    rows = _index_rows(butler)
    assert rows == {**{f"instrument_index:{n}": str(i) for n, i in final.items()},
                    **{f"instrument_index_value:{i}": n for n, i in final.items()}}
    # never changed afterwards: asking again, from a new butler, or registering another instrument
    from butler._multi_instrument import instrument_index

    fresh = Butler(butler.root, writeable=True)
    assert {n: instrument_index(fresh.registry, n) for n in names} == final
    _register_more(fresh, tmp_path, ["CamE"])
    packer = fresh.packer("instrument_visit_detector")
    assert instrument_index(fresh.registry, "CamE") == len(names)
    assert _index_rows(fresh) == {**rows, "instrument_index:CamE": str(len(names)),
                                  f"instrument_index_value:{len(names)}": "CamE"}
    for name, index in final.items():
        assert packer.pack({"instrument": name, "visit": 0, "detector": 0}) >> (packer.n_bits - 4) == index


def _wait_until_blocked(butler: Butler, seconds: float = 60.0) -> None:
    """Until a server session is waiting on a row lock of this repository's tables (PostgreSQL, MySQL)."""
    import time

    import sqlalchemy as sa

    db = butler.registry.db
    if db.dialect == "postgresql":
        sql = ("SELECT count(*) FROM pg_stat_activity WHERE wait_event_type = 'Lock' "
               "AND query LIKE :pattern")
    else:  # a row-lock wait, or any statement on the table still running in another session
        sql = ("SELECT (SELECT count(*) FROM information_schema.innodb_trx WHERE trx_state = 'LOCK WAIT' "
               "AND trx_query LIKE :pattern) + (SELECT count(*) FROM information_schema.processlist "
               "WHERE command = 'Query' AND id != CONNECTION_ID() AND info LIKE :pattern AND time >= 1)")
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        with db.engine.connect() as conn:
            if conn.execute(sa.text(sql), {"pattern": f"%{db.namespace}%butler_attributes%"}).scalar_one():
                return
        time.sleep(0.05)
    with db.engine.connect() as conn:  # say what the sessions were doing instead
        if db.dialect == "postgresql":
            state = conn.execute(sa.text("SELECT state, wait_event_type, query FROM pg_stat_activity")).all()
        else:
            state = conn.execute(sa.text("SELECT command, state, time, info FROM information_schema.processlist")).all()
    raise AssertionError(f"the allocating process never waited on the lock; server sessions: {state}")


def test_an_index_claimed_concurrently_is_not_taken_twice(repo_factory, tmp_path):
    """Deterministic interleaving: another writer holds index 2 uncommitted while a process allocates."""
    import time

    from butler._multi_instrument import instrument_index

    butler = repo_factory()
    _register_cameras(butler, tmp_path, ["CamA", "CamB"])
    assert (instrument_index(butler.registry, "SimCam"), instrument_index(butler.registry, "HexCam")) == (0, 1)
    ctx = _context()
    barrier = ctx.Barrier(2)
    queue = ctx.Queue()
    proc = ctx.Process(target=_allocate, args=(butler.root, ["CamB"], barrier, queue))
    t = butler.registry.schema.attributes
    with butler.registry.db.transaction(write=True) as conn:  # a concurrent claim of 2 for CamA, not committed
        conn.execute(t.insert(), [{"name": "instrument_index_value:2", "value": "CamA"},
                                  {"name": "instrument_index:CamA", "value": "2"}])
        proc.start()
        barrier.wait(timeout=60)
        if butler.registry.db.dialect == "sqlite":
            time.sleep(1.0)  # the process queues on BEGIN IMMEDIATE until this commits
        else:
            _wait_until_blocked(butler)  # its insert of index 2 waits for this transaction
    status, _, got = queue.get(timeout=120)
    proc.join(timeout=30)
    assert status == "ok", got
    assert got == {"CamB": 3}
    assert instrument_index(Butler(butler.root).registry, "CamA") == 2
    expected = {"SimCam": 0, "HexCam": 1, "CamA": 2, "CamB": 3}
    assert _index_rows(butler) == {**{f"instrument_index:{n}": str(i) for n, i in expected.items()},
                                   **{f"instrument_index_value:{i}": n for n, i in expected.items()}}


def test_index_errors_change_nothing(repo_factory, tmp_path):
    from butler._multi_instrument import instrument_index
    from butler.errors import DataIdError
    from butler.testing import snapshot_repo

    butler = repo_factory()
    _register_cameras(butler, tmp_path, [])
    before = snapshot_repo(butler)
    with pytest.raises(DataIdError, match=r"instrument 'NoCam' is not registered, so it has no index; "
                                          r"registered instruments: \['HexCam', 'SimCam'\]"):
        instrument_index(butler.registry, "NoCam")
    assert snapshot_repo(butler) == before
    # the 4-bit index field is full: the 17th instrument is refused, naming the indices in use
    names = _register_more(butler, tmp_path, [f"Cam{i:02d}" for i in range(15)])
    for name in ["SimCam", "HexCam", *names[:14]]:
        instrument_index(butler.registry, name)
    before = snapshot_repo(butler)
    with pytest.raises(DataIdError, match=r"no instrument index left for 'Cam14': .* at most 16 instruments"):
        instrument_index(butler.registry, "Cam14")
    assert snapshot_repo(butler) == before


