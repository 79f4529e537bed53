"""``butler export``, ``butler import``, ``butler transfer``, ``butler compare`` and ``butler verify-bundle`` (issue 12)."""

from __future__ import annotations

import json
from collections.abc import Sequence

import click

from ._options import collections_option, repo_argument, where_option

__all__ = ["compare", "export", "import_bundle", "transfer", "verify_bundle"]


@click.command("export")
@repo_argument
@click.argument("bundle", type=click.Path(dir_okay=True, file_okay=True))
@collections_option("Collections to export from (repeatable; globs and chains allowed; required).")
@where_option
@click.option("--dataset-type", "-t", "dataset_types", multiple=True, metavar="TYPE",
              help="Only datasets of this type (repeatable; globs allowed). Default: every type.")
@click.option("--no-files", is_flag=True, help="Write the manifest only (records, refs, checksums), not the files.")
@click.option("--no-chains", is_flag=True, help="Do not export the CHAINED collections given, only what they hold.")
@click.option("--verify", is_flag=True, help="Re-read every file against its recorded checksum before exporting it.")
def export(repo: str, bundle: str, collections: Sequence[str], where: str | None, dataset_types: Sequence[str],
           no_files: bool, no_chains: bool, verify: bool) -> None:
    """Export the datasets of COLLECTIONS in REPO, with their records, to BUNDLE (a .zip file, else a directory).

    Every run's copy of each dataset found is exported, with the collections, dimension records
    and provenance it needs; see docs/transfers.md for the format.

    \b
    Examples:
      butler export /data/repo coadd.zip -c u/alice/coadd --where "tract = 9000" -t deepCoadd
      butler export /data/repo raws/ -c SimCam/raw/all --no-files
    """
    from .._butler import Butler

    if not collections:
        raise click.UsageError("give the collections to export with -c COLLECTION")
    butler = Butler(repo)
    report = butler.export(bundle, collections=list(collections), where=where,
                           dataset_types=list(dataset_types) or None, include_files=not no_files,
                           chains=not no_chains, verify=verify)
    click.echo(str(report))


@click.command("import")
@repo_argument
@click.argument("bundle", type=click.Path(exists=False))
@click.option("--transfer", type=click.Choice(["copy", "hardlink", "move", "auto"]), default="copy", show_default=True,
              help="How files get from a directory bundle into REPO (a zip's members are extracted).")
@click.option("--allow-foreign-run", is_flag=True, help="Also import into existing runs owned by somebody else.")
def import_bundle(repo: str, bundle: str, transfer: str, allow_foreign_run: bool) -> None:
    """Import BUNDLE (written by `butler export`) into REPO: all or nothing, idempotent.

    Every file's checksum is verified before anything is registered; a dataset, dimension record
    or collection that conflicts with REPO's is refused, naming it, and REPO is left unchanged.

    \b
    Example:
      butler import /scratch/copy coadd.zip
    """
    from .._butler import Butler

    report = Butler(repo, writeable=True).import_(bundle, transfer=transfer, allow_foreign_run=allow_foreign_run)
    click.echo(str(report))


@click.command("transfer")
@click.argument("source", type=click.Path(file_okay=False))
@click.argument("dest", type=click.Path(file_okay=False))
@collections_option("Collections to transfer from (repeatable; globs and chains allowed; required).")
@where_option
@click.option("--dataset-type", "-t", "dataset_types", multiple=True, metavar="TYPE",
              help="Only datasets of this type (repeatable; globs allowed). Default: every type.")
@click.option("--transfer", type=click.Choice(["auto", "copy", "hardlink"]), default="auto", show_default=True,
              help="How files get into DEST: auto hard-links where both are on one file system, else copies.")
@click.option("--allow-foreign-run", is_flag=True, help="Also write into existing runs of DEST owned by somebody else.")
@click.option("--batch-size", type=click.IntRange(min=1), default=10_000, show_default=True,
              help="Datasets registered per committed step (a killed transfer keeps the steps done).")
def transfer(source: str, dest: str, collections: Sequence[str], where: str | None, dataset_types: Sequence[str],
             transfer: str, allow_foreign_run: bool, batch_size: int) -> None:
    """Transfer the datasets of COLLECTIONS in SOURCE, with their files and records, into DEST.

    Every run's copy of each dataset found is transferred with its id, the collections, dimension
    records and provenance it needs; every file is verified against its recorded checksum first.
    Refusals are those of `butler import`. Run it again after an interruption: it copies only what
    is missing.

    \b
    Examples:
      butler transfer /data/repo /scratch/copy -c u/alice/coadd --where "tract = 9000"
      butler transfer site_a site_b -c HSC/runs/RC2 -t deepCoadd --transfer copy
    """
    from .._butler import Butler

    if not collections:
        raise click.UsageError("give the collections to transfer with -c COLLECTION")
    report = Butler(dest, writeable=True).transfer_from(
        Butler(source), collections=list(collections), where=where, dataset_types=list(dataset_types) or None,
        transfer=transfer, allow_foreign_run=allow_foreign_run, batch_size=batch_size)
    click.echo(str(report))


@click.command("compare")
@click.argument("repo_a", type=click.Path(file_okay=False))
@click.argument("repo_b", type=click.Path(file_okay=False))
@collections_option("Only datasets in these collections (repeatable; globs and chains allowed). Default: all.")
@click.option("--dataset-type", "-t", "dataset_types", multiple=True, metavar="TYPE",
              help="Only datasets of this type (repeatable; globs allowed). Default: every type.")
@click.option("--format", "-f", "fmt", type=click.Choice(["table", "json"]), default="table", show_default=True,
              help="Output format.")
def compare(repo_a: str, repo_b: str, collections: Sequence[str], dataset_types: Sequence[str], fmt: str) -> None:
    """Compare the content of REPO_A and REPO_B: (dataset type, data ID, run, file checksums), not ids.

    Exits with status 0 when they are identical and 1 when they differ (2 on errors).

    \b
    Examples:
      butler compare /data/repo /scratch/copy -c u/alice/coadd
      butler compare site_a site_b --format json
    """
    from .._butler import Butler
    from ._output import print_rows

    report = Butler.compare(repo_a, repo_b, collections=list(collections) or None,
                            dataset_types=list(dataset_types) or None)
    if fmt == "json":
        click.echo(json.dumps(report.to_dict(), indent=2, default=str))
    else:
        rows = [{"side": side, "dataset_type": k.dataset_type, "run": k.run,
                 "data_id": ", ".join(f"{d}={v}" for d, v in k.data_id.items())}
                for side, keys in (("only in a", report.only_in_a), ("only in b", report.only_in_b),
                                   ("different", report.different)) for k in keys]
        if rows:
            print_rows(rows, ["side", "dataset_type", "run", "data_id"], "table")
        click.echo(str(report))
    if not report.identical:
        raise click.exceptions.Exit(1)


@click.command("verify-bundle")
@click.argument("bundle", type=click.Path(exists=False))
def verify_bundle(bundle: str) -> None:
    """Check a bundle: its manifest, paths, and every file's checksum and size.

    Exits with status 0 when it is sound; a problem is reported as an error (status 2).

    \b
    Example:
      butler verify-bundle coadd.zip
    """
    from ..transfer import open_bundle

    with open_bundle(bundle) as opened:
        n = opened.verify_files()
        totals = opened.manifest.get("totals", {})
        click.echo(f"{bundle}: format {opened.manifest['format_version']}.{opened.manifest.get('format_minor', 0)}, "
                   f"{totals.get('datasets', 0)} datasets, {n} files verified, no problems")
