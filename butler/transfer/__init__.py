"""Repositories that travel: export bundles, the bundle reader, import, transfer between
repositories, comparison of repositories.

Import and transfer go through the one write path (``butler/_write_path.py``). See docs/transfers.md for the bundle format. Importing this package is cheap: pyarrow is
imported by the first table written or read.
"""

from ._bundle import Bundle, open_bundle
from ._compare import ComparisonReport, DatasetKey
from ._errors import (
    BundleChecksumError,
    BundleCorruptError,
    BundleError,
    BundleManifestError,
    BundleMissingFileError,
    BundleNotFoundError,
    BundlePathError,
    BundleUniverseError,
    BundleVersionError,
)
from ._export import ExportReport
from ._format import FORMAT_MINOR, FORMAT_VERSION, BundleCollection, BundleDatasetType
from ._import import IMPORT_MODES, ImportReport
from ._transfer import TRANSFER_MODES, TransferReport
from ._writer import BundleWriter

__all__ = [
    "FORMAT_MINOR",
    "FORMAT_VERSION",
    "IMPORT_MODES",
    "TRANSFER_MODES",
    "Bundle",
    "BundleChecksumError",
    "BundleCollection",
    "BundleCorruptError",
    "BundleDatasetType",
    "BundleError",
    "BundleManifestError",
    "BundleMissingFileError",
    "BundleNotFoundError",
    "BundlePathError",
    "BundleUniverseError",
    "BundleVersionError",
    "BundleWriter",
    "ComparisonReport",
    "DatasetKey",
    "ExportReport",
    "ImportReport",
    "TransferReport",
    "open_bundle",
]
