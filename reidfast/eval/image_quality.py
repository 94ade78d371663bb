"""Quality of generated images: Frechet distance (FID) with a pluggable feature network, and SSIM.

Frechet distance: fit a Gaussian to the features of real and of generated images and take
``||mu_r - mu_g||^2 + Tr(S_r + S_g - 2 (S_r S_g)^(1/2))`` (in float64). It is the published FID only when
the features are those of the standard Inception network: :class:`TorchScriptFeatures` loads that network from
a TorchScript file the user has (``--fid-weights PATH``; the widely used ``inception-2015-12-05.pt``, which
takes uint8-range RGB images of any size and returns its 2048-d pool features with ``return_features=True``).
Any other feature network (e.g. the run's own re-id encoder, the default) gives a number labelled as not
comparable with published FID; it still ranks runs of the same setting.

SSIM (structural similarity) uses the standard definition: an 11x11 Gaussian window with sigma 1.5,
C1 = (0.01 L)^2, C2 = (0.03 L)^2 for data range L = 1, per channel over the valid window positions, averaged.
Diversity is reported as the mean SSIM over pairs of images that share one appearance and differ in structure
(lower = more diverse), next to the same statistic for real same-identity pairs.
"""
from __future__ import annotations

import warnings
from pathlib import Path
from typing import Callable

import torch
import torch.nn.functional as F

from ..data import denormalize

FID_COMPARABLE_LABEL = "Inception (TorchScript, --fid-weights): comparable with published FID"


def frechet_distance(real: torch.Tensor, fake: torch.Tensor) -> float:
    """The Frechet distance between Gaussians fitted to two (N, D) feature sets (N >= 2 each)."""
    for name, x in (("real", real), ("fake", fake)):
        if x.dim() != 2 or x.shape[0] < 2:
            raise ValueError(f"frechet_distance: {name} features must be (N >= 2, D), got {tuple(x.shape)}")
    if real.shape[1] != fake.shape[1]:
        raise ValueError(f"frechet_distance: feature sizes differ ({real.shape[1]} vs {fake.shape[1]})")
    real, fake = real.double().cpu(), fake.double().cpu()
    mu_r, mu_f = real.mean(0), fake.mean(0)
    cov_r, cov_f = torch.cov(real.T).reshape(real.shape[1], -1), torch.cov(fake.T).reshape(fake.shape[1], -1)
    # Tr((S_r S_f)^(1/2)) = Tr((A S_f A)^(1/2)) with A = S_r^(1/2): a symmetric PSD matrix, so eigvalsh applies
    # (the eigenvalues of S_r S_f are those of A S_f A), with no general matrix square root needed.
    vals, vecs = torch.linalg.eigh(cov_r)
    sqrt_r = (vecs * vals.clamp_min(0).sqrt()) @ vecs.T
    middle = torch.linalg.eigvalsh(sqrt_r @ cov_f @ sqrt_r).clamp_min(0).sqrt().sum()
    value = (mu_r - mu_f).square().sum() + cov_r.trace() + cov_f.trace() - 2 * middle
    return float(value.clamp_min(0))


def _gaussian_window(size: int, sigma: float, device, dtype) -> torch.Tensor:
    coords = torch.arange(size, device=device, dtype=dtype) - (size - 1) / 2
    g = torch.exp(-coords.square() / (2 * sigma * sigma))
    return g / g.sum()


def ssim(x: torch.Tensor, y: torch.Tensor, data_range: float = 1.0, window: int = 11,
         sigma: float = 1.5) -> torch.Tensor:
    """(N,) SSIM of image pairs (N, C, H, W) with values in [0, data_range]. Images smaller than the window use
    the largest odd window that fits (the same Gaussian sigma)."""
    if x.shape != y.shape or x.dim() != 4:
        raise ValueError(f"ssim: expected two (N, C, H, W) batches of one shape, got {tuple(x.shape)} and "
                         f"{tuple(y.shape)}")
    window = min(window, x.shape[-1] - (1 - x.shape[-1] % 2), x.shape[-2] - (1 - x.shape[-2] % 2))
    x, y = x.double(), y.double()
    c = x.shape[1]
    g = _gaussian_window(window, sigma, x.device, x.dtype)
    kernel_h = g.view(1, 1, 1, -1).expand(c, 1, 1, window)
    kernel_v = g.view(1, 1, -1, 1).expand(c, 1, window, 1)

    def blur(t):  # separable Gaussian, valid positions only
        return F.conv2d(F.conv2d(t, kernel_h, groups=c), kernel_v, groups=c)

    mu_x, mu_y = blur(x), blur(y)
    var_x = blur(x * x) - mu_x.square()
    var_y = blur(y * y) - mu_y.square()
    cov = blur(x * y) - mu_x * mu_y
    c1, c2 = (0.01 * data_range) ** 2, (0.03 * data_range) ** 2
    s = ((2 * mu_x * mu_y + c1) * (2 * cov + c2)) / ((mu_x.square() + mu_y.square() + c1) * (var_x + var_y + c2))
    return s.flatten(1).mean(1)


def mean_pairwise_ssim(groups: torch.Tensor) -> float:
    """Mean SSIM over the distinct pairs inside each group of a (G, K, C, H, W) batch of [0, 1] images."""
    if groups.dim() != 5 or groups.shape[1] < 2:
        raise ValueError(f"mean_pairwise_ssim: expected (groups, K >= 2, C, H, W), got {tuple(groups.shape)}")
    k = groups.shape[1]
    i, j = torch.triu_indices(k, k, offset=1)
    return float(ssim(groups[:, i].flatten(0, 1), groups[:, j].flatten(0, 1)).mean())


class TorchScriptFeatures:
    """A feature network loaded from a TorchScript file, fed uint8-range RGB images (0..255 floats), as the
    standard FID Inception file expects; called with ``return_features=True`` when it accepts it."""

    def __init__(self, path: str, device: torch.device):
        if not Path(path).is_file():
            raise ValueError(f"--fid-weights: {path} is not a file")
        try:
            with warnings.catch_warnings():  # deprecated in recent torch, but the standard file is TorchScript
                warnings.simplefilter("ignore", FutureWarning)
                self.net = torch.jit.load(path, map_location=device).eval()
        except Exception as exc:
            raise ValueError(f"--fid-weights: {path} is not a TorchScript file ({type(exc).__name__}: {exc})") from exc
        self.label = FID_COMPARABLE_LABEL

    @torch.no_grad()
    def __call__(self, normalized_images: torch.Tensor) -> torch.Tensor:
        images = (denormalize(normalized_images.float()) * 255).clamp(0, 255)
        try:
            out = self.net(images, return_features=True)
        except (RuntimeError, TypeError):
            out = self.net(images)
        return out.flatten(1).float()


def generated_image_quality(generate_pairs: Callable[[int], tuple[torch.Tensor, torch.Tensor]],
                            features: Callable[[torch.Tensor], torch.Tensor], num_images: int,
                            batch_size: int = 64) -> dict:
    """FID-style distance between real and generated images: ``generate_pairs(n)`` gives (real, generated)
    batches of n normalized images; ``features`` maps normalized images to (n, D)."""
    real_f, fake_f = [], []
    done = 0
    while done < num_images:
        n = min(batch_size, num_images - done)
        real, fake = generate_pairs(n)
        real_f.append(features(real).cpu())
        fake_f.append(features(fake).cpu())
        done += n
    return {"frechet_distance": frechet_distance(torch.cat(real_f), torch.cat(fake_f)), "num_images": num_images}


__all__ = ["frechet_distance", "ssim", "mean_pairwise_ssim", "TorchScriptFeatures", "generated_image_quality",
           "FID_COMPARABLE_LABEL"]
