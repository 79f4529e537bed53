"""``butler register-skymap`` and ``butler define-visits``: the spatial side of a repository."""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import Any

import click

from ._options import repo_argument, where_option

__all__ = ["define_visits", "parse_tracts", "register_skymap"]

_RANGE = re.compile(r"(\d+)-(\d+)")


def parse_tracts(items: Sequence[str]) -> list[int]:
    """Tract ids from ``("9000", "9001,9002", "9010-9012")``: ints, comma lists and inclusive ranges."""
    out: list[int] = []
    for item in items:
        for token in item.replace(",", " ").split():
            match = _RANGE.fullmatch(token)
            if match:
                first, last = int(match.group(1)), int(match.group(2))
                if last < first:
                    raise click.BadParameter(f"range {token!r} is empty (write low-high)", param_hint="'--tracts'")
                out.extend(range(first, last + 1))
            elif token.isdigit():
                out.append(int(token))
            else:
                raise click.BadParameter(f"{token!r} is not a tract id, a comma list or a range like 9000-9010",
                                         param_hint="'--tracts'")
    return out


def _skymap_from_options(rings: int | None, config: str | None, name: str | None, patch_grid: tuple[int, int] | None,
                         pixel_scale: float | None, tract_overlap: float | None, patch_border: int | None,
                         ra_start: float | None) -> Any:
    from ..skymap import RingsSkyMap, skymap_from_config

    params: dict[str, Any] = {}
    if patch_grid is not None:
        params["patch_grid"] = list(patch_grid)
    for key, value in (("pixel_scale_arcsec", pixel_scale), ("tract_overlap_deg", tract_overlap),
                       ("patch_border_pixels", patch_border)):
        if value is not None:
            params[key] = value
    if rings is not None and config is None:
        if ra_start is not None:
            params["ra_start_deg"] = ra_start
        return RingsSkyMap(name or f"rings{rings}", rings, **params)
    if rings is not None or config is None:
        raise click.UsageError("give either --rings N (a rings skymap) or --config FILE.yaml")
    import yaml

    with open(config) as f:
        loaded = yaml.safe_load(f)
    if isinstance(loaded, dict) and isinstance(loaded.get("skymap"), dict):
        loaded = loaded["skymap"]
    if not isinstance(loaded, dict):
        raise click.BadParameter(f"{config} must hold a mapping (a skymap configuration with 'type')",
                                 param_hint="'--config'")
    loaded = {**loaded, **params}
    if ra_start is not None:
        loaded["ra_start_deg"] = ra_start
    if name is not None:
        loaded["name"] = name
    if "name" not in loaded:
        raise click.BadParameter(f"{config} has no 'name'; add one or pass --name", param_hint="'--config'")
    try:
        return skymap_from_config(loaded)
    except TypeError as err:  # unknown or missing parameters of the skymap class
        raise click.BadParameter(f"{config}: {err}", param_hint="'--config'") from None


@click.command("register-skymap")
@repo_argument
@click.argument("more_tracts", nargs=-1, metavar="")
@click.option("--rings", type=click.IntRange(min=1), default=None, metavar="N",
              help="Register a rings skymap of N declination rings (120: the LSST skymap, 18,938 tracts).")
@click.option("--config", type=click.Path(dir_okay=False, exists=True), default=None, metavar="FILE.yaml",
              help="Register the skymap described by this YAML/JSON mapping: type (rings or discrete), name and "
                   "the parameters (num_rings; or centers and radius_deg).")
@click.option("--name", default=None, help="Skymap name (default: rings<N>, or the name in --config).")
@click.option("--patch-grid", type=(click.IntRange(min=1), click.IntRange(min=1)), default=None, metavar="NX NY",
              help="Patches per tract along x and y (default 10 10).")
@click.option("--pixel-scale", type=float, default=None, metavar="ARCSEC", help="Pixel scale (default 0.2).")
@click.option("--tract-overlap", type=float, default=None, metavar="DEG", help="Tract overlap (default 0.02).")
@click.option("--patch-border", type=int, default=None, metavar="PIXELS", help="Patch border (default 100).")
@click.option("--ra-start", type=float, default=None, metavar="DEG", help="RA of the first tract of each ring.")
@click.option("--tracts", "tracts", multiple=True, metavar="ID...",
              help="Register only these tracts and their patches, e.g. --tracts 9000 9001, --tracts 9000,9001 "
                   "or --tracts 9000-9010. Tracts already registered are skipped.")
def register_skymap(repo: str, more_tracts: Sequence[str], rings: int | None, config: str | None, name: str | None,
                    patch_grid: tuple[int, int] | None, pixel_scale: float | None, tract_overlap: float | None,
                    patch_border: int | None, ra_start: float | None, tracts: Sequence[str]) -> None:
    """Register a skymap's tracts and patches (records, regions, spatial index) in REPO.

    Registering the same skymap again adds only the tracts not registered yet; a different
    configuration under an existing name is an error saying what differs. Registering all of a
    120-ring skymap (1.9 million patches) takes under a minute; --tracts registers a few in a
    second.

    \b
    Example:
      butler register-skymap /data/repo --rings 120 --name rings120 --tracts 9000 9001
      butler register-skymap /data/repo --rings 120 --patch-grid 10 10 --pixel-scale 0.2
      butler register-skymap /data/repo --config deep_fields.yaml
    """
    from .._butler import Butler

    if more_tracts and not tracts:
        raise click.UsageError(f"unexpected arguments {' '.join(more_tracts)} (tract ids go after --tracts)")
    skymap = _skymap_from_options(rings, config, name, patch_grid, pixel_scale, tract_overlap, patch_border,
                                  ra_start)
    selected = parse_tracts([*tracts, *more_tracts]) if tracts else None
    if tracts and not selected:
        raise click.BadParameter("no tract ids given", param_hint="'--tracts'")
    butler = Butler(repo, writeable=True)
    added = butler.register_skymap(skymap, tracts=selected)
    total = skymap.num_tracts
    if added:
        click.echo(f"registered {added} of {total} tracts ({added * skymap.num_patches} patches) of skymap "
                   f"{skymap.name!r}")
    else:
        click.echo(f"skymap {skymap.name!r}: the requested tracts were already registered; nothing added")


@click.command("define-visits")
@repo_argument
@click.argument("instrument")
@where_option
@click.option("--update", is_flag=True,
              help="Also recompute visits that exist (e.g. after the exposures' boresights were improved).")
def define_visits(repo: str, instrument: str, where: str | None, update: bool) -> None:
    """Define visits of INSTRUMENT's exposures in REPO, with their sky regions.

    One visit per exposure (same id). Visit and visit+detector regions come from the
    exposure's boresight (tracking_ra, tracking_dec, sky_angle) and the camera geometry, and
    are indexed for spatial queries (tract/patch <-> visit/detector). Exposures that already
    have a visit are skipped unless --update is given. --where selects exposures.

    \b
    Example:
      butler define-visits /data/repo SimCam
      butler define-visits /data/repo SimCam --where "exposure.day_obs = 20261124" --update
    """
    from .._butler import Butler

    butler = Butler(repo, writeable=True)
    count = butler.define_visits(instrument, where=where, update=update)
    if count:
        click.echo(f"{'defined or updated' if update else 'defined'} {count} visit(s) of {instrument}")
    else:
        click.echo(f"every matching exposure of {instrument} already has a visit; nothing defined "
                   "(--update recomputes them)")
