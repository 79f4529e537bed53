"""Exceptions raised by the butler.

Every exception inherits both ``ButlerError`` (so callers can catch anything the
butler raises) and the standard exception that describes the kind of failure
(so generic code that catches ``LookupError`` or ``PermissionError`` still works).
Messages say what was asked, where the butler looked, and what is close.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from ._dataset_ref import DatasetRef

__all__ = [
    "ButlerError",
    "ChecksumError",
    "CollectionError",
    "ConflictError",
    "DataIdError",
    "DatasetNotFoundError",
    "DatasetTypeError",
    "ExpressionError",
    "InvalidNameError",
    "ReadOnlyError",
    "RegistryConnectionError",
    "RemoteAuthError",
    "RemoteError",
    "RemoteProtocolError",
    "RemoteTransferError",
    "RemoteUnavailableError",
    "RepositoryConfigError",
    "RepositoryNotFoundError",
    "RunLockedError",
    "RunOwnershipError",
    "StorageClassError",
    "TemplateError",
]


class ButlerError(Exception):
    """Base class of every error raised by the butler."""


class DatasetNotFoundError(LookupError, ButlerError):
    """No dataset matches the dataset type, data ID and collections asked for."""


class DatasetTypeError(LookupError, ButlerError):
    """A dataset type is unknown, or is registered with a different definition."""


class CollectionError(LookupError, ButlerError):
    """A collection does not exist or has the wrong type for the operation."""


class DataIdError(ValueError, ButlerError):
    """A data ID has an unknown key, a missing key, a bad value or a value not in the registry."""


class ExpressionError(ValueError, ButlerError):
    """A where-expression could not be parsed or does not fit the query."""


class StorageClassError(TypeError, ButlerError):
    """An object does not match the storage class of its dataset type."""


class TemplateError(ValueError, ButlerError):
    """A file template is malformed or cannot make unique paths."""


class InvalidNameError(ValueError, ButlerError):
    """A name (collection, run, dataset type, namespace) is not a valid value: too long, reserved,
    or containing characters that cannot be stored or would make an unsafe path."""


class ConflictError(ButlerError):
    """A dataset or definition already exists and would be overwritten."""


class RunLockedError(ConflictError):
    """A run is being executed (or removed) by another process right now (see ``butler._run_lock``)."""


class ReadOnlyError(PermissionError, ButlerError):
    """A write was attempted through a read-only butler."""


class RunOwnershipError(PermissionError, ButlerError):
    """A write was attempted into a RUN collection owned by somebody else."""


class ChecksumError(OSError, ButlerError):
    """Bytes read back do not match the checksum recorded when they were written."""

    ref: DatasetRef | None = None
    """The dataset the damaged file belongs to, when the reader knows it."""


class RepositoryNotFoundError(FileNotFoundError, ButlerError):
    """The repository root or its configuration file does not exist."""


class RegistryConnectionError(ConnectionError, ButlerError):
    """The registry database could not be reached."""


class RepositoryConfigError(ValueError, ButlerError):
    """The repository exists but its configuration or registry file is unreadable or corrupted,
    or the path given is not a repository directory."""


class RemoteError(ButlerError):
    """A remote repository (``butler serve``, static hosting, ssh) answered with something unusable."""


class RemoteUnavailableError(RemoteError, ConnectionError):
    """A remote repository could not be reached (host down, refused, timed out, connection lost)."""


class RemoteAuthError(RemoteError, PermissionError):
    """A remote repository refused the request's credentials (missing or wrong bearer token)."""


class RemoteProtocolError(RemoteError):
    """A remote repository's answer does not follow the butler protocol (another server, another
    protocol version, a malformed answer)."""


class RemoteTransferError(RemoteError):
    """Bytes received from a remote repository are not the bytes announced: a truncated download,
    a range answered with other bytes, or a file that changed on the server while it was read.
    Nothing of such a transfer is kept."""
