"""Image I/O, datasets (demo, realsr, paired) and the dataset validator.

Every data option is one factory returning a :class:`DataBundle`, selected with
``data=<name>`` (conf/data/<name>.yaml, ``_target_`` = the factory):

- ``demo_data``   (``data=demo``, default): scikit-image's bundled photos + a procedural,
  continuous-in-scale camera degradation; no download.
- ``realsr_data`` (``data=realsr``): RealSR V2 "ordered" layout (or V3, LR resized).
- ``paired_data`` (``data=paired``): users' own ``HR/`` + ``x<s>/`` folders.

Each option's defaults live only in conf/data/<name>.yaml; from Python,
``build_data("realsr", root=...)`` applies them (:mod:`degflow.data.options`). Every bundle
has a validation split that is not the test split; ``bundle.test`` reads the test split
(evaluation only, on demand).

Dataset items are dicts ``{"name": str, "hr": [3, h, w], "lr": [S, 3, h, w],
"scales": [S] float32}``, images in [-1, 1], LR stored at HR size and aligned with hr.
``python -m degflow.data.check data=... data.root=...`` validates a data tree.
"""

from degflow.core.scales import check_scales
from degflow.data.common import DataBundle, Report, split_names
from degflow.data.demo import demo_data, scan_demo, simulate_camera
from degflow.data.images import (
    IMAGE_EXTENSIONS,
    ImageReadError,
    find_images,
    read_image,
    write_image,
)
from degflow.data.options import DATA_OPTIONS, build_data, option_defaults
from degflow.data.paired import paired_data, scan_paired
from degflow.data.realsr import realsr_data, scan_realsr

__all__ = [
    "DataBundle",
    "Report",
    "check_scales",
    "split_names",
    "DATA_OPTIONS",
    "build_data",
    "option_defaults",
    "scan_demo",
    "IMAGE_EXTENSIONS",
    "ImageReadError",
    "read_image",
    "write_image",
    "find_images",
    "simulate_camera",
    "demo_data",
    "realsr_data",
    "scan_realsr",
    "paired_data",
    "scan_paired",
]
