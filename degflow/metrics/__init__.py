"""How close a degraded image is to the real one.

- :mod:`degflow.metrics.image`: Y-channel PSNR and SSIM (the SR protocol), evaluation protocols;
- :mod:`degflow.metrics.perceptual`: LPIPS with real pretrained backbones (offline weights);
- :mod:`degflow.metrics.noise`: statistics of the degradation residual (histogram KL, AKLD) and
  a no-reference noise level.

The image metrics are also importable from here (``from degflow.metrics import psnr_y``).
"""

from degflow.metrics.image import EVAL_PROTOCOLS, EvalProtocol, eval_protocol, psnr_y, rgb_to_y, ssim_y

__all__ = ["EVAL_PROTOCOLS", "EvalProtocol", "eval_protocol", "psnr_y", "rgb_to_y", "ssim_y"]
