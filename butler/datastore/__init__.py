"""The datastore: storage classes, formatters and checksummed atomic file I/O.

Importing this package is cheap: numpy, pyarrow, astropy and yaml are imported
only by the formatters that need them, on first use.
"""

from ._file_io import (
    CHECKSUM_ALGORITHM,
    StagedFile,
    checksum_bytes,
    checksum_file,
    stage,
    verify_bytes,
    verify_file,
    write_atomic,
)
from ._formatters import (
    Formatter,
    formatter_for,
    get_formatter,
    known_formatters,
    register_formatter,
)
from ._storage_class import (
    StorageClass,
    get_storage_class,
    known_storage_classes,
    register_storage_class,
)

__all__ = [
    "CHECKSUM_ALGORITHM",
    "Formatter",
    "StagedFile",
    "StorageClass",
    "checksum_bytes",
    "checksum_file",
    "formatter_for",
    "get_formatter",
    "get_storage_class",
    "known_formatters",
    "known_storage_classes",
    "register_formatter",
    "register_storage_class",
    "stage",
    "verify_bytes",
    "verify_file",
    "write_atomic",
]
