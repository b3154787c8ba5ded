"""Image quality per image: PSNR and SSIM (7x7 uniform window, as scikit-image's default), on images in [0, 1]."""

from __future__ import annotations

import torch
from torch.nn import functional as F

SSIM_WINDOW = 7
SSIM_K1, SSIM_K2 = 0.01, 0.03
MSE_FLOOR = 1e-10
"""Identical images would have infinite PSNR; the floor caps it at 100 dB."""


def psnr_db(reference: torch.Tensor, test: torch.Tensor) -> torch.Tensor:
    """PSNR of each image (peak 1.0), in dB: ``N x ...`` -> ``N``."""
    mse = ((reference.double() - test.double()) ** 2).flatten(1).mean(1)
    return 10.0 * torch.log10(1.0 / mse.clamp_min(MSE_FLOOR))


def ssim(reference: torch.Tensor, test: torch.Tensor, window: int = SSIM_WINDOW) -> torch.Tensor:
    """Mean SSIM of each single-channel image ``N x 1 x H x W`` (data range 1.0).

    Wang et al. (2004) with a ``window x window`` uniform window and sample
    covariances, averaged over the windows that lie inside the image: the
    definition of ``skimage.metrics.structural_similarity`` with its defaults.
    """
    if reference.shape != test.shape or reference.dim() != 4 or reference.shape[1] != 1:
        raise ValueError(f"expected two N x 1 x H x W batches of one shape, got {tuple(reference.shape)} and {tuple(test.shape)}")
    if min(reference.shape[-2:]) < window:
        raise ValueError(f"images of {tuple(reference.shape[-2:])} are smaller than the {window}x{window} window")
    x, y = reference.double(), test.double()

    def mean(t: torch.Tensor) -> torch.Tensor:
        return F.avg_pool2d(t, window, stride=1)

    n = window * window
    cov_norm = n / (n - 1)
    ux, uy = mean(x), mean(y)
    vx = cov_norm * (mean(x * x) - ux * ux)
    vy = cov_norm * (mean(y * y) - uy * uy)
    vxy = cov_norm * (mean(x * y) - ux * uy)
    c1, c2 = SSIM_K1**2, SSIM_K2**2
    s = ((2 * ux * uy + c1) * (2 * vxy + c2)) / ((ux * ux + uy * uy + c1) * (vx + vy + c2))
    return s.flatten(1).mean(1)
