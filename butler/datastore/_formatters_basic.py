"""Formatters for structured data (json, yaml), raw bytes and numpy arrays (npy).

numpy and yaml are imported inside the methods so that importing this module
(which happens on the first put/get of any structured dataset) stays cheap.
"""

from __future__ import annotations

import io
import json
from collections.abc import Mapping
from typing import Any, ClassVar

from ._formatters import Formatter

__all__ = ["BytesFormatter", "JsonFormatter", "NpyFormatter", "YamlFormatter"]

_json_encoder = json.JSONEncoder(separators=(",", ":"), ensure_ascii=False)
_json_decoder = json.JSONDecoder()


class JsonFormatter(Formatter):
    """Dicts and lists as compact UTF-8 JSON (key order kept; tuples come back as lists)."""

    name: ClassVar[str] = "json"
    extension: ClassVar[str] = ".json"

    def to_bytes(self, obj: Any) -> bytes:
        if not isinstance(obj, (dict, list)):
            raise self._wrong_type(obj, "dict or list")
        try:
            return _json_encoder.encode(obj).encode()
        except (TypeError, ValueError) as err:  # unsupported value type, circular reference
            raise self._cannot_serialise(err) from err

    def _from_bytes(self, data: bytes, component: str | None, parameters: Mapping[str, Any]) -> Any:
        return _json_decoder.decode(data.decode())


class YamlFormatter(Formatter):
    """Dicts and lists as block-style YAML, for files people read and edit."""

    name: ClassVar[str] = "yaml"
    extension: ClassVar[str] = ".yaml"

    def to_bytes(self, obj: Any) -> bytes:
        if not isinstance(obj, (dict, list)):
            raise self._wrong_type(obj, "dict or list")
        import yaml

        dumper = getattr(yaml, "CSafeDumper", yaml.SafeDumper)
        try:
            text = yaml.dump(
                obj, Dumper=dumper, sort_keys=False, default_flow_style=False, allow_unicode=True
            )
        except yaml.representer.RepresenterError as err:
            raise self._cannot_serialise(err) from err
        return text.encode()

    def _from_bytes(self, data: bytes, component: str | None, parameters: Mapping[str, Any]) -> Any:
        import yaml

        loader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)
        return yaml.load(bytes(data), Loader=loader)  # a safe loader; bytes: yaml refuses bytearray


class BytesFormatter(Formatter):
    """Raw bytes, written as given."""

    name: ClassVar[str] = "bytes"
    extension: ClassVar[str] = ".bin"

    def to_bytes(self, obj: Any) -> bytes:
        if isinstance(obj, bytes):
            return obj
        if isinstance(obj, (bytearray, memoryview)):
            return bytes(obj)
        raise self._wrong_type(obj, "bytes")

    def _from_bytes(self, data: bytes, component: str | None, parameters: Mapping[str, Any]) -> Any:
        return bytes(data)


class NpyFormatter(Formatter):
    """numpy arrays in the ``.npy`` format (no pickles, so object arrays are refused)."""

    name: ClassVar[str] = "npy"
    extension: ClassVar[str] = ".npy"

    def to_bytes(self, obj: Any) -> bytes:
        import numpy as np

        if not isinstance(obj, np.ndarray):
            raise self._wrong_type(obj, "numpy.ndarray")
        if obj.dtype.hasobject:
            raise self._wrong_type(obj, "a numpy.ndarray without object dtype")
        buffer = io.BytesIO()
        np.lib.format.write_array(buffer, obj, allow_pickle=False)
        return buffer.getvalue()

    def _from_bytes(self, data: bytes, component: str | None, parameters: Mapping[str, Any]) -> Any:
        import numpy as np

        if isinstance(data, bytearray):  # the datastore's verified bytes: the array is a view of them, no copy
            array = _npy_view(data)
            if array is not None:
                return array
        return np.load(io.BytesIO(data), allow_pickle=False)

    def _read(self, path: str, component: str | None, parameters: Mapping[str, Any]) -> Any:
        import numpy as np

        # No mmap: the file may be replaced or deleted while the array is alive.
        return np.load(path, mmap_mode=None, allow_pickle=False)


def _npy_view(data: bytearray) -> Any:
    """The array of ``.npy`` bytes as a writable view of ``data``; None for layouts left to ``np.load``."""
    import numpy as np

    fmt = np.lib.format
    head = io.BytesIO(bytes(memoryview(data)[: 1 << 16]))  # a version 1/2 header is shorter
    try:
        version = fmt.read_magic(head)
        if version == (1, 0):
            shape, fortran, dtype = fmt.read_array_header_1_0(head)
        elif version == (2, 0):
            shape, fortran, dtype = fmt.read_array_header_2_0(head)
        else:
            return None
    except ValueError:
        return None  # np.load raises the error users know
    if dtype.hasobject:
        return None  # np.load refuses it (no pickles)
    count = 1
    for n in shape:
        count *= n
    offset = head.tell()
    if len(data) - offset != count * dtype.itemsize:
        return None
    array = np.frombuffer(data, dtype=dtype, count=count, offset=offset)
    return array.reshape(shape[::-1]).transpose() if fortran else array.reshape(shape)
