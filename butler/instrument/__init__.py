"""Instruments: camera definitions (YAML) turned into dimension records, aliases and templates,
and `Camera`, the typed camera dataset that a repository certifies by validity time.

Importing this package is cheap (stdlib only; YAML is parsed on first use).
"""

from ._camera import (
    ALIAS_TARGETS,
    DETECTOR_PURPOSES,
    CameraDefinition,
    CameraDefinitionError,
    DetectorDefinition,
    FilterDefinition,
    canonical_digest,
    load_camera,
    parse_camera,
)
from ._camera_dataset import Camera
from ._focal_plane import PIXEL_SIZE_MM, detector_corners
from ._instrument import (
    Instrument,
    UnknownInstrumentError,
    VisitDetectorInstrument,
    known_instruments,
    load_instrument,
    register_instrument,
)
from ._simcam import HexCam, SimCam

__all__ = [
    "ALIAS_TARGETS",
    "DETECTOR_PURPOSES",
    "PIXEL_SIZE_MM",
    "Camera",
    "CameraDefinition",
    "CameraDefinitionError",
    "DetectorDefinition",
    "FilterDefinition",
    "HexCam",
    "Instrument",
    "SimCam",
    "UnknownInstrumentError",
    "VisitDetectorInstrument",
    "canonical_digest",
    "detector_corners",
    "known_instruments",
    "load_camera",
    "load_instrument",
    "parse_camera",
    "register_instrument",
]
