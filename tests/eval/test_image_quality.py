"""Frechet distance and SSIM against independent formulas."""
import warnings

import numpy as np
import pytest
import torch

from reidfast.eval.image_quality import frechet_distance, mean_pairwise_ssim, ssim


def features(n=400, d=6, seed=0):
    g = torch.Generator().manual_seed(seed)
    mix = torch.randn(d, d, generator=g, dtype=torch.float64)
    return torch.randn(n, d, generator=g, dtype=torch.float64) @ mix + torch.randn(d, generator=g, dtype=torch.float64)


def test_frechet_distance_matches_the_definition_through_a_general_eigensolver():
    real, fake = features(seed=1), features(seed=2) * 0.7 + 0.3
    mu_r, mu_f = real.mean(0), fake.mean(0)
    cov_r, cov_f = torch.cov(real.T), torch.cov(fake.T)
    # Tr((S_r S_f)^(1/2)) as the sum of square roots of the (real, non-negative) eigenvalues of the product
    middle = torch.linalg.eigvals(cov_r @ cov_f).real.clamp_min(0).sqrt().sum()
    expected = (mu_r - mu_f).square().sum() + cov_r.trace() + cov_f.trace() - 2 * middle
    assert frechet_distance(real, fake) == pytest.approx(float(expected), rel=1e-9)
    assert frechet_distance(real.float(), fake.float()) == pytest.approx(float(expected), rel=1e-4)


def test_frechet_distance_of_shifted_and_scaled_sets():
    real = features(seed=3)
    assert frechet_distance(real, real) == pytest.approx(0.0, abs=1e-8)
    shift = torch.tensor([1.0, -2.0, 0.5, 0.0, 3.0, 1.0], dtype=torch.float64)
    assert frechet_distance(real, real + shift) == pytest.approx(float(shift.square().sum()), rel=1e-9)
    one_d = torch.randn(500, 1, dtype=torch.float64) + 2.0  # fake = 2 real: (m - 2m)^2 + s + 4s - 2 * 2s
    m, s = float(one_d.mean()), float(one_d.var())
    assert frechet_distance(one_d, 2 * one_d) == pytest.approx(m * m + s, rel=1e-9)


def test_frechet_distance_rejects_bad_shapes():
    with pytest.raises(ValueError, match="feature sizes differ"):
        frechet_distance(torch.randn(5, 3), torch.randn(5, 4))
    with pytest.raises(ValueError, match="N >= 2"):
        frechet_distance(torch.randn(1, 3), torch.randn(5, 3))


def ssim_by_loops(x, y, window=11, sigma=1.5):
    """SSIM written out window by window in numpy (one channel)."""
    coords = np.arange(window) - (window - 1) / 2
    g = np.exp(-coords ** 2 / (2 * sigma ** 2))
    w = np.outer(g, g) / np.outer(g, g).sum()
    c1, c2 = 0.01 ** 2, 0.03 ** 2
    values = []
    for i in range(x.shape[0] - window + 1):
        for j in range(x.shape[1] - window + 1):
            a, b = x[i:i + window, j:j + window], y[i:i + window, j:j + window]
            ma, mb = (w * a).sum(), (w * b).sum()
            va, vb = (w * a * a).sum() - ma ** 2, (w * b * b).sum() - mb ** 2
            cov = (w * a * b).sum() - ma * mb
            values.append((2 * ma * mb + c1) * (2 * cov + c2) / ((ma ** 2 + mb ** 2 + c1) * (va + vb + c2)))
    return float(np.mean(values))


def test_ssim_matches_the_windowed_definition():
    g = torch.Generator().manual_seed(0)
    x = torch.rand(2, 1, 14, 13, generator=g)
    y = (x + 0.2 * torch.rand(2, 1, 14, 13, generator=g)).clamp(0, 1)
    got = ssim(x, y)
    for n in range(2):
        assert float(got[n]) == pytest.approx(ssim_by_loops(x[n, 0].double().numpy(), y[n, 0].double().numpy()),
                                              rel=1e-9)
    assert torch.allclose(ssim(x, x), torch.ones(2, dtype=torch.float64))
    assert torch.allclose(ssim(x, y), ssim(y, x))


def test_mean_pairwise_ssim_is_one_for_identical_images_and_lower_for_different_ones():
    x = torch.rand(1, 1, 3, 16, 16)
    assert mean_pairwise_ssim(x.expand(2, 3, 3, 16, 16)) == pytest.approx(1.0)
    assert mean_pairwise_ssim(torch.rand(2, 3, 3, 16, 16)) < 0.5
    with pytest.raises(ValueError, match="K >= 2"):
        mean_pairwise_ssim(torch.rand(2, 1, 3, 16, 16))


class _PoolFeatures(torch.nn.Module):
    """A stand-in with the standard FID network's calling convention (0-255 RGB in, pooled features out)."""

    def forward(self, x: torch.Tensor, return_features: bool = False) -> torch.Tensor:
        pooled = x.mean((2, 3))
        return pooled if return_features else pooled.sum(1, keepdim=True)


def test_torchscript_feature_network_gets_0_255_images_and_returns_its_features(tmp_path):
    from reidfast.data import normalize
    from reidfast.eval.image_quality import FID_COMPARABLE_LABEL, TorchScriptFeatures
    path = tmp_path / "features.pt"
    with warnings.catch_warnings():  # torch.jit is deprecated in recent torch; the FID network still ships in it
        warnings.simplefilter("ignore", FutureWarning)
        torch.jit.script(_PoolFeatures()).save(str(path))
    net = TorchScriptFeatures(str(path), torch.device("cpu"))
    assert net.label == FID_COMPARABLE_LABEL
    pixels = torch.randint(0, 256, (2, 3, 8, 4), dtype=torch.uint8)
    torch.testing.assert_close(net(normalize(pixels)), pixels.float().mean((2, 3)), atol=1e-3, rtol=0)
    (tmp_path / "junk.pt").write_bytes(b"not a model")
    with pytest.raises(ValueError, match="--fid-weights: .* is not a TorchScript file"):
        TorchScriptFeatures(str(tmp_path / "junk.pt"), torch.device("cpu"))
    with pytest.raises(ValueError, match="is not a file"):
        TorchScriptFeatures(str(tmp_path / "missing.pt"), torch.device("cpu"))
