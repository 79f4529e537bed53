"""Errors of bundles: each names what is wrong with the bundle and where.

Every one is a `ButlerError` and a standard exception: a bundle that is not what it claims to
be is a ``ValueError`` (corrupt, malformed, too new, unsafe paths), a file it lacks is a
``FileNotFoundError``, damaged bytes are a `ChecksumError` (an ``OSError``).
"""

from __future__ import annotations

from ..errors import ButlerError, ChecksumError

__all__ = [
    "BundleChecksumError",
    "BundleCorruptError",
    "BundleError",
    "BundleManifestError",
    "BundleMissingFileError",
    "BundleNotFoundError",
    "BundlePathError",
    "BundleUniverseError",
    "BundleVersionError",
]


class BundleError(ButlerError):
    """Base of every error about an export bundle."""


class BundleNotFoundError(FileNotFoundError, BundleError):
    """The bundle path does not exist."""


class BundleCorruptError(ValueError, BundleError):
    """The bundle's container is unreadable: a truncated or damaged zip, an unreadable table."""


class BundleManifestError(ValueError, BundleError):
    """The manifest is missing, malformed, or does not describe the bundle's contents."""


class BundleVersionError(BundleManifestError):
    """The bundle was written in a newer major format version than this butler reads."""


class BundleUniverseError(BundleManifestError):
    """The bundle's dimension universe does not fit the destination repository's."""


class BundlePathError(BundleManifestError):
    """A path in the bundle would escape it: ``..``, absolute, a backslash, a symlink pointing out."""


class BundleMissingFileError(FileNotFoundError, BundleError):
    """A file the manifest lists is not in the bundle."""


class BundleChecksumError(ChecksumError, BundleError):
    """A file in the bundle differs from the checksum or size its manifest records."""
