"""Downstream super-resolution: train SR networks on degflow data and score them on real pairs.

- :mod:`degflow.sr.fit`: seeded, resumable SR training;
- :mod:`degflow.sr.scoring`: Y-PSNR / SSIM / LPIPS of an SR network on real test pairs;
- :mod:`degflow.sr.compare`: the comparison of training sets (``python -m degflow sr-compare``).

The SR networks are in :mod:`degflow.models.sr`, the pair folders in :mod:`degflow.data.sr_pairs`.
"""
