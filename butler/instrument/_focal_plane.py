"""Focal-plane geometry of detectors: where a detector's corners are, relative to the boresight.

Camera definitions give each detector's offset in mm of ``PIXEL_SIZE_MM`` pixels, its size in
pixels, pixel scale and rotation; visit regions (``define_visits``) and simulated images both start
from these corners, so regions match pixels.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

__all__ = ["PIXEL_SIZE_MM", "detector_corners"]

PIXEL_SIZE_MM = 0.010  # focal-plane pixel pitch assumed by camera YAML offsets (10 um)


def detector_corners(detector: Mapping[str, Any]) -> list[tuple[float, float]]:
    """Focal-plane corners of a detector in arcsec offsets from the boresight (x east, y north)."""
    scale = float(detector["pixel_scale_arcsec"])
    width, height = detector["bbox_width"], detector["bbox_height"]
    cx = float(detector["offset_x_mm"]) / PIXEL_SIZE_MM * scale
    cy = float(detector["offset_y_mm"]) / PIXEL_SIZE_MM * scale
    rot = math.radians(float(detector.get("rotation_deg") or 0.0))
    hw, hh = width * scale / 2, height * scale / 2
    corners = []
    for sx, sy in ((-1, -1), (1, -1), (1, 1), (-1, 1)):
        x, y = sx * hw, sy * hh
        corners.append((cx + x * math.cos(rot) - y * math.sin(rot), cy + x * math.sin(rot) + y * math.cos(rot)))
    return corners
