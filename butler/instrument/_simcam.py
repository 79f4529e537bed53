"""The two test cameras shipped with the butler: each is a class pointing at its YAML.

SimCam is the small synthetic camera of the tests and the demo (3x3 detectors of 1024x1024
pixels at 0.2 arcsec). HexCam is shaped differently on purpose (rafts, non-contiguous ids
from 100, wavefront and guider detectors, a narrow-band filter, a ``raw`` template
override) so that code written against SimCam alone does not pass by accident.
"""

from __future__ import annotations

from typing import ClassVar

from ._instrument import VisitDetectorInstrument

__all__ = ["HexCam", "SimCam"]


class SimCam(VisitDetectorInstrument):
    """Synthetic 3x3 camera used by the tests and the demo."""

    camera_file: ClassVar[str | None] = "cameras/simcam.yaml"


class HexCam(VisitDetectorInstrument):
    """Second test camera: rafts, sparse detector ids, non-science detectors."""

    camera_file: ClassVar[str | None] = "cameras/hexcam.yaml"
