"""Repositories that travel: export bundles, the bundle reader, comparison of repositories.

See docs/transfers.md for the bundle format. Importing this package is cheap: pyarrow is
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
from ._writer import BundleWriter

__all__ = [
    "FORMAT_MINOR",
    "FORMAT_VERSION",
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
    "open_bundle",
]
