"""Formatters of the ``Camera`` storage class: a camera version as JSON or as a camera YAML.

The file holds the camera definition's canonical mapping (``Camera.to_dict``), which is also a
valid camera YAML (``load_instrument(path)`` reads a ``camera_yaml`` file). Reading validates it
as strictly as a hand-written camera file, so a damaged or hand-edited file fails with a
``CameraDefinitionError`` naming the file and the key, not later with a confusing geometry.
``put`` accepts a `Camera`, a `CameraDefinition` or an `Instrument`; ``get`` returns a `Camera`.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any, ClassVar

from ._formatters import Formatter

__all__ = ["CameraJsonFormatter", "CameraYamlFormatter"]


class CameraJsonFormatter(Formatter):
    """A `Camera` as compact JSON (sorted keys: the bytes depend only on the definition)."""

    name: ClassVar[str] = "camera_json"
    extension: ClassVar[str] = ".json"
    syntax: ClassVar[str] = "JSON"

    def to_bytes(self, obj: Any) -> bytes:
        return self._dump(self._mapping(obj))

    def _dump(self, data: dict[str, Any]) -> bytes:
        return json.dumps(data, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()

    def _load(self, data: bytes) -> Any:
        return json.loads(data.decode())

    def _mapping(self, obj: Any) -> dict[str, Any]:
        from butler.instrument import Camera

        camera = Camera.coerce(obj)
        if camera is None:
            raise self._wrong_type(obj, "butler.instrument.Camera, CameraDefinition or Instrument")
        return camera.to_dict()

    def _from_bytes(self, data: bytes, component: str | None, parameters: Mapping[str, Any]) -> Any:
        return self._parse(data, "<camera dataset>")

    def _read(self, path: str, component: str | None, parameters: Mapping[str, Any]) -> Any:
        with open(path, "rb") as stream:
            return self._parse(stream.read(), path)

    def _read_checked(self, path: str, verified: Any, component: str | None, parameters: Mapping[str, Any]) -> Any:
        return self._parse(verified, path)

    def _parse(self, data: bytes, where: str) -> Any:
        from butler.instrument import Camera, CameraDefinitionError

        try:
            mapping = self._load(data)
        except ValueError as err:  # JSON and YAML errors (yaml.YAMLError is re-raised as ValueError)
            raise CameraDefinitionError(f"{where}: the camera file is not valid {self.syntax}: {err}") from None
        return Camera.from_dict(mapping, source=where)


class CameraYamlFormatter(CameraJsonFormatter):
    """A `Camera` as block-style YAML: a camera file people can read, diff and load as an instrument."""

    name: ClassVar[str] = "camera_yaml"
    extension: ClassVar[str] = ".yaml"
    syntax: ClassVar[str] = "YAML"

    def _dump(self, data: dict[str, Any]) -> bytes:
        import yaml

        dumper = getattr(yaml, "CSafeDumper", yaml.SafeDumper)
        return yaml.dump(data, Dumper=dumper, sort_keys=False, default_flow_style=False).encode()

    def _load(self, data: bytes) -> Any:
        import yaml

        try:
            loader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)
            return yaml.load(bytes(data), Loader=loader)  # a safe loader; bytes: yaml refuses bytearray
        except yaml.YAMLError as err:
            raise ValueError(str(err)) from None
