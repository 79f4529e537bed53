"""Formatters for tables and images: parquet (pyarrow) and FITS (astropy).

Parquet serves both ``ArrowTable`` and ``AstropyTable``. Astropy tables are
converted column by column through numpy (never through pandas), recording in
the arrow field metadata what arrow cannot hold itself: the exact numpy dtype
(``<U5``, ``>f4``...), the unit, the description, the per-row shape of
multidimensional columns (stored as fixed-size lists) and whether the column was
masked; table ``meta`` goes to the schema metadata as JSON. Reading with
``columns=`` reads only those column chunks from disk; ``filters=`` (ArrowTable)
also prunes row groups using the parquet statistics.

FITS writes an ndarray as the primary HDU and a table as a binary table
extension. Reading returns the kind of object the bound storage class wants; an
unbound formatter returns whatever the first HDU with data holds, so files
written by other software (image in an extension, empty primary) read as well.
FITS limitations apply: header keys are upper-cased, masked floats come back as
NaN, multi-byte values come back big-endian in tables (images are made native).
"""

from __future__ import annotations

import io
import json
import sys
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any, ClassVar

from butler.errors import StorageClassError

from ._formatters import Formatter

if TYPE_CHECKING:
    import numpy as np
    import pyarrow as pa
    from astropy.table import Table

__all__ = ["FitsFormatter", "ParquetFormatter", "arrow_to_astropy", "astropy_to_arrow"]

_ASTROPY_META = b"butler.astropy_meta"


def _is_astropy_table(obj: Any) -> bool:
    if "astropy.table" not in sys.modules:
        return False
    from astropy.table import Table

    return isinstance(obj, Table)


def _astropy_class(formatter: Formatter) -> type[Table] | None:
    """The astropy table class the bound storage class wants, if any."""
    sc = formatter.storage_class
    if sc is None or not sc.pytype.startswith("astropy.table."):
        return None
    return sc.python_types()[0]


def _columns(parameters: Mapping[str, Any]) -> list[str] | None:
    columns = parameters.get("columns")
    if columns is None:
        return None
    return [columns] if isinstance(columns, str) else list(columns)


def _check_columns(
    formatter: Formatter, requested: Sequence[str], available: Sequence[str]
) -> None:
    missing = [c for c in requested if c not in available]
    if missing:
        raise StorageClassError(
            f"formatter {formatter.name!r}: unknown column(s) {missing}; "
            f"available: {list(available)}"
        )


def _json_default(value: Any) -> Any:
    if hasattr(value, "tolist"):  # numpy scalars and arrays
        return value.tolist()
    raise TypeError(
        f"table meta value {value!r} of type {type(value).__name__} is not JSON-serialisable"
    )


# -- astropy <-> arrow ----------------------------------------------------------------------


def astropy_to_arrow(table: Table) -> pa.Table:
    """Convert an astropy table to arrow, keeping dtypes, units, masks and meta."""
    import numpy as np
    import pyarrow as pa

    fields = []
    arrays = []
    for name, col in table.columns.items():
        if not isinstance(col, np.ndarray):
            raise StorageClassError(
                f"column {name!r} of type {type(col).__name__} cannot be stored in parquet; "
                "use the 'fits' formatter or convert it to plain columns"
            )
        metadata: dict[str, str] = {}
        mask = None
        if isinstance(col, np.ma.MaskedArray):
            metadata["masked"] = "1"
            mask = np.ma.getmaskarray(col)
            if not mask.any():
                mask = None
            data = np.asarray(np.ma.getdata(col))
        else:
            data = np.asarray(col)
        metadata["numpy_dtype"] = data.dtype.str
        if not data.dtype.isnative:  # e.g. big-endian columns read from FITS
            data = data.astype(data.dtype.newbyteorder("="))
        unit = getattr(col, "unit", None)
        if unit is not None:
            metadata["unit"] = unit.to_string()
        description = getattr(getattr(col, "info", None), "description", None)  # astropy's column info
        if description:
            metadata["description"] = str(description)
        if data.dtype.hasobject:
            values = list(data.reshape(-1))
            flat_mask = None if mask is None else mask.reshape(-1)
            array = pa.array(values, mask=flat_mask)
        else:
            array = pa.array(data.reshape(-1), mask=None if mask is None else mask.reshape(-1))
        if data.ndim > 1:
            metadata["shape"] = json.dumps(list(data.shape[1:]))
            array = pa.FixedSizeListArray.from_arrays(array, int(np.prod(data.shape[1:])))
        fields.append(pa.field(name, array.type, metadata=metadata))
        arrays.append(array)
    schema_metadata = {}
    if table.meta:
        schema_metadata[_ASTROPY_META] = json.dumps(dict(table.meta), default=_json_default)
    return pa.Table.from_arrays(arrays, schema=pa.schema(fields, metadata=schema_metadata))


def _fill_value(arrow_type: pa.DataType) -> Any:
    import pyarrow as pa

    if pa.types.is_boolean(arrow_type):
        return False
    if pa.types.is_integer(arrow_type) or pa.types.is_floating(arrow_type):
        return 0
    if pa.types.is_string(arrow_type) or pa.types.is_large_string(arrow_type):
        return ""
    if pa.types.is_binary(arrow_type) or pa.types.is_large_binary(arrow_type):
        return b""
    return None


def _to_numpy(array: pa.Array, dtype: str | None) -> tuple[np.ndarray, np.ndarray | None]:
    """Values and mask (or None) of a flat arrow array."""
    import numpy as np
    import pyarrow as pa
    import pyarrow.compute as pc

    if pa.types.is_dictionary(array.type):
        array = array.dictionary_decode()
    mask = None
    if array.null_count:
        mask = array.is_null().to_numpy(zero_copy_only=False)
        fill = _fill_value(array.type)
        if fill is not None:
            array = pc.fill_null(array, pa.scalar(fill, array.type))
    values = array.to_numpy(zero_copy_only=False)
    if dtype is not None:
        values = values.astype(np.dtype(dtype), copy=False)
    elif values.dtype.hasobject:
        kind = array.type
        if pa.types.is_string(kind) or pa.types.is_large_string(kind):
            values = values.astype(str)
        elif pa.types.is_binary(kind) or pa.types.is_large_binary(kind):
            values = values.astype(bytes)
    return values, mask


def arrow_to_astropy(table: pa.Table, cls: type[Table] | None = None) -> Table:
    """Convert an arrow table to astropy, undoing `astropy_to_arrow`."""
    import pyarrow as pa
    from astropy.table import Column, MaskedColumn
    from astropy.table import Table as AstropyTable

    columns = []
    for field, chunked in zip(table.schema, table.columns, strict=True):
        metadata = {k.decode(): v.decode() for k, v in (field.metadata or {}).items()}
        array = chunked.combine_chunks()
        dtype = metadata.get("numpy_dtype")
        if pa.types.is_fixed_size_list(array.type):
            shape = tuple(json.loads(metadata.get("shape", "null")) or [array.type.list_size])
            values, mask = _to_numpy(array.flatten(), dtype)
            values = values.reshape((len(array), *shape))
            mask = None if mask is None else mask.reshape(values.shape)
        else:
            values, mask = _to_numpy(array, dtype)
        kwargs = {
            "name": field.name,
            "unit": metadata.get("unit"),
            "description": metadata.get("description"),
        }
        if mask is not None or metadata.get("masked"):
            columns.append(MaskedColumn(values, mask=mask if mask is not None else False, **kwargs))
        else:
            columns.append(Column(values, copy=False, **kwargs))
    meta_json = (table.schema.metadata or {}).get(_ASTROPY_META)
    meta = json.loads(meta_json) if meta_json else None
    return (cls or AstropyTable)(columns, meta=meta, copy=False)


# -- parquet ----------------------------------------------------------------------------


class ParquetFormatter(Formatter):
    """Arrow or astropy tables as parquet, with column selection and row filters."""

    name: ClassVar[str] = "parquet"
    extension: ClassVar[str] = ".parquet"
    supported_parameters: ClassVar[frozenset[str]] = frozenset({"columns", "filters"})

    def to_bytes(self, obj: Any) -> bytes:
        import pyarrow as pa
        import pyarrow.parquet as pq

        if _is_astropy_table(obj):
            try:
                table = astropy_to_arrow(obj)
            except (TypeError, ValueError, pa.ArrowException) as err:
                raise self._cannot_serialise(err) from err
        elif isinstance(obj, pa.Table):
            table = obj
        else:
            raise self._wrong_type(obj, "pyarrow.Table or astropy.table.Table")
        sink = pa.BufferOutputStream()
        pq.write_table(table, sink)
        data: bytes = sink.getvalue().to_pybytes()
        return data

    def _read_source(self, source: Any, fresh: Any, parameters: Mapping[str, Any]) -> Any:
        import pyarrow.parquet as pq

        columns = _columns(parameters)
        filters = parameters.get("filters")
        parquet_file = pq.ParquetFile(source)
        if columns is not None:
            # pyarrow silently ignores unknown names; a typo must not return fewer columns.
            _check_columns(self, columns, parquet_file.schema_arrow.names)
        if filters is None:
            table = parquet_file.read(columns=columns)
        else:
            table = pq.read_table(fresh(), columns=columns, filters=filters)
        cls = _astropy_class(self)
        return table if cls is None else arrow_to_astropy(table, cls)

    def _read(self, path: str, component: str | None, parameters: Mapping[str, Any]) -> Any:
        return self._read_source(path, lambda: path, parameters)

    def _from_bytes(self, data: bytes, component: str | None, parameters: Mapping[str, Any]) -> Any:
        import pyarrow as pa

        return self._read_source(pa.BufferReader(data), lambda: pa.BufferReader(data), parameters)


# -- FITS -------------------------------------------------------------------------------


class FitsFormatter(Formatter):
    """numpy images and astropy tables as FITS."""

    name: ClassVar[str] = "fits"
    extension: ClassVar[str] = ".fits"
    supported_parameters: ClassVar[frozenset[str]] = frozenset({"columns"})

    def to_bytes(self, obj: Any) -> bytes:
        import numpy as np
        from astropy.io import fits

        try:
            if _is_astropy_table(obj):
                hdus = fits.HDUList([fits.PrimaryHDU(), fits.table_to_hdu(obj)])
            elif isinstance(obj, np.ndarray):
                hdus = fits.HDUList([fits.PrimaryHDU(obj)])
            else:
                raise self._wrong_type(obj, "numpy.ndarray or astropy.table.Table")
            buffer = io.BytesIO()
            hdus.writeto(buffer)
        except (TypeError, ValueError, KeyError) as err:
            if isinstance(err, StorageClassError):
                raise
            raise self._cannot_serialise(err) from err
        return buffer.getvalue()

    def _wanted(self) -> str | None:
        sc = self.storage_class
        if sc is None:
            return None
        return "table" if sc.pytype.startswith("astropy.table.") else "image"

    def _from_hdus(self, hdus: Any, parameters: Mapping[str, Any], where: str) -> Any:
        import numpy as np
        from astropy.io import fits
        from astropy.io.fits.connect import read_table_fits

        wanted = self._wanted()
        for index, hdu in enumerate(hdus):
            is_image = isinstance(hdu, (fits.PrimaryHDU, fits.ImageHDU))
            is_table = isinstance(hdu, (fits.BinTableHDU, fits.TableHDU)) and not is_image
            if is_image and wanted != "table" and hdu.header.get("NAXIS", 0) > 0:
                if parameters.get("columns") is not None:
                    raise StorageClassError(
                        f"formatter {self.name!r}: parameter 'columns' applies to tables, "
                        f"but HDU {index} of {where} is an image"
                    )
                data = hdu.data
                return np.array(data, dtype=data.dtype.newbyteorder("="))
            if is_table and wanted != "image":
                table = read_table_fits(
                    hdus, hdu=index, character_as_bytes=False, mask_invalid=False
                )
                columns = _columns(parameters)
                if columns is not None:
                    _check_columns(self, columns, table.colnames)
                    table = table[columns]
                cls = _astropy_class(self)
                return table if cls is None or type(table) is cls else cls(table, copy=False)
        kind = {"image": "an image", "table": "a table"}.get(wanted or "", "data")
        raise StorageClassError(f"no HDU of {where} holds {kind}")

    def _read(self, path: str, component: str | None, parameters: Mapping[str, Any]) -> Any:
        from astropy.io import fits

        with fits.open(path, memmap=False) as hdus:
            return self._from_hdus(hdus, parameters, path)

    def _from_bytes(self, data: bytes, component: str | None, parameters: Mapping[str, Any]) -> Any:
        return self._read_checked("<bytes>", data, component, parameters)

    def _read_checked(self, path: str, verified: Any, component: str | None, parameters: Mapping[str, Any]) -> Any:
        from astropy.io import fits

        with fits.open(io.BytesIO(verified), memmap=False) as hdus:
            return self._from_hdus(hdus, parameters, path)
