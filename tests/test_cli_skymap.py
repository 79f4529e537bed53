"""``butler register-skymap``, ``butler define-visits`` and the --skymap/--tract/--patch shorthands."""

from __future__ import annotations

import json

import pytest
from click.testing import CliRunner

from butler import Butler
from butler.cli import cli
from butler.cli._commands_skymap import parse_tracts
from butler.skymap import RingsSkyMap


def run(*args: str, code: int = 0):
    result = CliRunner().invoke(cli, list(args))
    assert result.exit_code == code, (result.exit_code, result.output, result.exception)
    return result


@pytest.fixture
def root(tmp_path) -> str:
    path = str(tmp_path / "repo")
    run("create", path)
    run("register-instrument", path, "SimCam")
    return path


def add_exposures(root: str) -> RingsSkyMap:
    sm = RingsSkyMap("rings12", num_rings=12)
    tract = sm[100]
    pw, ph = tract.patch_size
    records = []
    for i, (x, y) in enumerate([(5 * pw, 5 * ph), (2.5 * pw, 7.5 * ph)], start=1):
        ra, dec = tract.pixel_to_sky(x - 0.5, y - 0.5)
        records.append({"instrument": "SimCam", "id": i, "physical_filter": "SimCam-r", "day_obs": 20261124,
                        "tracking_ra": float(ra), "tracking_dec": float(dec), "sky_angle": 0.0})
    Butler(root, writeable=True).insert_dimension_records("exposure", records)
    return sm


@pytest.mark.parametrize("command", ["register-skymap", "define-visits"])
def test_help_has_an_example(command):
    result = run(command, "--help")
    assert "Example:" in result.output and "REPO" in result.output


def test_parse_tracts():
    assert parse_tracts(["9000", "9001,9003", "9005-9007"]) == [9000, 9001, 9003, 9005, 9006, 9007]
    with pytest.raises(Exception, match="not a tract id"):
        parse_tracts(["90a"])
    with pytest.raises(Exception, match="empty"):
        parse_tracts(["9007-9005"])


def test_register_skymap_tracts_and_query_shorthands(root):
    result = run("register-skymap", root, "--rings", "12", "--tracts", "100", "101")
    assert "registered 2 of 246 tracts (200 patches) of skymap 'rings12'" in result.output
    result = run("register-skymap", root, "--rings", "12", "--tracts", "100-102")
    assert "registered 1 of 246 tracts" in result.output
    result = run("register-skymap", root, "--tracts", "100,101", "--rings", "12")
    assert "nothing added" in result.output
    out = json.loads(run("query-data-ids", root, "patch", "--skymap", "rings12", "--tract", "100", "-f", "json").output)
    assert [row["patch"] for row in out] == list(range(100))
    out = json.loads(run("query-data-ids", root, "tract", "-d", "skymap=rings12", "-f", "json").output)
    assert [row["tract"] for row in out] == [100, 101, 102]
    result = run("query-data-ids", root, "patch", "--skymap", "rings12", "--tract", "100", "-d", "tract=101", code=2)
    assert "disagrees" in result.output


def test_register_skymap_options_and_config(root, tmp_path):
    run("register-skymap", root, "--rings", "12", "--name", "small", "--patch-grid", "4", "5",
        "--pixel-scale", "0.4", "--tracts", "7")
    sm = Butler(root).get_skymap("small")
    assert (sm.num_rings, sm.patch_grid, sm.pixel_scale_arcsec) == (12, (4, 5), 0.4)
    config = tmp_path / "deep.yaml"
    config.write_text("type: discrete\nname: deep\ncenters: [[10.0, 0.0], [150.0, 30.0]]\nradius_deg: 0.3\n"
                      "patch_grid: [2, 2]\n")
    result = run("register-skymap", root, "--config", str(config))
    assert "registered 2 of 2 tracts (8 patches) of skymap 'deep'" in result.output
    out = json.loads(run("query-data-ids", root, "tract", "patch", "--skymap", "deep", "-f", "json").output)
    assert len(out) == 8


@pytest.mark.parametrize("args, message", [
    (["--rings", "12", "--tracts", "100", "300"], "has no tract 300 (tracts[1]); valid tract ids are 0 to 245"),
    (["--rings", "12", "100"], "tract ids go after --tracts"),
    ([], "give either --rings N"),
    (["--rings", "12", "--tracts", "x"], "not a tract id"),
])
def test_register_skymap_errors(root, args, message):
    result = run("register-skymap", root, *args, code=2)
    assert message in result.output
    assert Butler(root).query_dimension_records("skymap") == []


def test_register_skymap_conflict(root):
    run("register-skymap", root, "--rings", "12", "--tracts", "100")
    result = run("register-skymap", root, "--rings", "12", "--patch-grid", "5", "5", "--tracts", "100", code=2)
    assert "already registered with a different configuration: patch_grid: [10, 10] != [5, 5]" in result.output


def test_define_visits_and_spatial_queries(root):
    sm = add_exposures(root)
    run("register-skymap", root, "--rings", "12", "--tracts", "100")
    result = run("define-visits", root, "SimCam")
    assert "defined 2 visit(s) of SimCam" in result.output
    assert "nothing defined" in run("define-visits", root, "SimCam").output
    out = json.loads(run("query-data-ids", root, "visit", "detector", "--skymap", "rings12", "--tract", "100",
                         "--patch", "44", "-f", "json").output)
    assert {row["visit"] for row in out} == {1}
    out = json.loads(run("query-data-ids", root, "patch", "-i", "SimCam", "-d", "visit=2", "-d", "detector=4",
                         "-f", "json").output)
    tract, patch = sm.find_tract_patch(*sm[100].pixel_to_sky(2.5 * sm[100].patch_size[0] - 0.5,
                                                              7.5 * sm[100].patch_size[1] - 0.5))
    assert [(row["tract"], row["patch"]) for row in out] == [(tract, patch)]
    result = run("define-visits", root, "SimCam", "--update", "--where", "exposure = 2")
    assert "defined or updated 1 visit(s)" in result.output
    result = run("define-visits", root, "NoCam", code=2)
    assert "instrument 'NoCam' is not registered" in result.output
