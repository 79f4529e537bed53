"""The demo coadd pipeline: simulated SimCam raws, then calibrate, warp and coadd (numpy + astropy).

``pipelines/coadd.yaml`` names the tasks by path (``orchestration.demo.CalibrateTask``...);
``simulate_raws`` fills a repository with raws over a few patches; ``write_png`` makes previews.
Importing this package imports numpy, not astropy (the tasks import it when they run).
"""

from ._common import DETECTED, MASK_BITS, NO_DATA, NoInputs
from .preview import asinh_stretch, write_png, write_preview
from .simulate import DEMO_NIGHTS, demo_flavor_records, demo_skymap, prepare_demo_repo, simulate_raws
from .tasks import CalibrateTask, CalibrationError, CoaddTask, WarpTask, coadd_warps, select_warps
from .validate import coadd_photometry

__all__ = [
    "DEMO_NIGHTS",
    "DETECTED",
    "MASK_BITS",
    "NO_DATA",
    "CalibrateTask",
    "CalibrationError",
    "CoaddTask",
    "NoInputs",
    "WarpTask",
    "asinh_stretch",
    "coadd_photometry",
    "coadd_warps",
    "demo_flavor_records",
    "demo_skymap",
    "prepare_demo_repo",
    "select_warps",
    "simulate_raws",
    "write_png",
    "write_preview",
]
