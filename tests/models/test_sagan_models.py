"""SA-GAN's networks: shapes, identity at initialization, the homography round trip and the spatial cycle loss."""
import pytest
import torch

from reidfast.models.sagan import (Critic, ResnetGenerator, SiaNet, SpatialTransformer, TransformCritic,
                                   homography_vector)
from reidfast.ops import _extension, homography_from_params, homography_warp
from reidfast.train.sagan import contrastive, gradient_penalty, normalized_inverse, spatial_cycle_loss

needs_ext = pytest.mark.skipif(not _extension.has_cpu_kernels(), reason="reidfast._C not built")


@needs_ext
def test_shapes_and_identity_at_initialization():
    x, mask = torch.randn(3, 3, 32, 16), (torch.rand(3, 1, 32, 16) > 0.5).float()
    stm = SpatialTransformer(3, code_dim=4, hidden=8)
    warped, warped_mask, T = stm(x, mask, torch.randn(3, 4))
    assert warped.shape == x.shape and warped_mask.shape == mask.shape and T.shape == (3, 3, 3)
    torch.testing.assert_close(T, torch.eye(3).expand(3, 3, 3))  # a fresh STM does not move the image
    torch.testing.assert_close(warped, x, atol=1e-5, rtol=1e-5)
    gen = ResnetGenerator(3, ngf=4, blocks=1)
    torch.testing.assert_close(gen(x), x)  # nor does a fresh generator change it
    assert Critic(3, ndf=4)(x).shape == (3,)
    assert TransformCritic(16)(T).shape == (3,)
    assert SiaNet(3, width=4, dim=8)(x).shape == (3, 8)
    with pytest.raises(ValueError, match="multiples of 4"):
        gen(torch.randn(1, 3, 30, 16))


def test_homography_parameters_stay_bounded():
    stm = SpatialTransformer(3, code_dim=2, hidden=4, bound=0.3)
    torch.nn.init.normal_(stm.params.bias, std=100.0)  # a localization net pushed far out
    T = stm.predict(torch.randn(2, 3, 32, 16), torch.ones(2, 1, 32, 16), torch.randn(2, 2))
    free = homography_vector(T) - homography_vector(torch.eye(3).expand(2, 3, 3))
    assert free.abs().max() <= 0.3 + 1e-6 and free.abs().max() > 0.29


@needs_ext
def test_warp_then_inverse_warp_returns_the_image_inside_the_valid_region():
    # a smooth image (bilinear resampling of a smooth image is nearly exact) and a clear perspective warp
    yy, xx = torch.meshgrid(torch.linspace(-1, 1, 64), torch.linspace(-1, 1, 32), indexing="ij")
    img = torch.stack([torch.sin(2 * xx + yy), torch.cos(3 * yy), xx * yy])[None].double()
    T = homography_from_params(torch.tensor([[0.15, 0.05, 0.1, -0.05, -0.1, 0.05, 0.1, -0.08]], dtype=torch.float64))
    inv = normalized_inverse(T)
    ones = torch.ones_like(img[:, :1])
    there = homography_warp(torch.cat([img, ones], 1), T)
    back = homography_warp(there, inv)
    valid = back[:, 3:] > 0.999  # where the round trip sampled inside the warped image
    assert 0.3 < valid.float().mean() < 0.95  # the warp does lose a border, and keeps most of the image
    err = (back[:, :3] - img).abs()[valid.expand(-1, 3, -1, -1)]
    assert err.max() < 0.02
    # the same warp in the other direction is not the identity: the test would notice a wrong inverse
    wrong = homography_warp(homography_warp(torch.cat([img, ones], 1), T), T)
    assert (wrong[:, :3] - img).abs()[(wrong[:, 3:] > 0.999).expand(-1, 3, -1, -1)].max() > 0.1


def test_spatial_cycle_loss_is_zero_for_exact_inverses_and_positive_otherwise():
    p = torch.randn(4, 8) * 0.1
    T = homography_from_params(p)
    exact = torch.linalg.inv(T) * 3.0  # any scale: predictions are compared with H[2, 2] = 1
    torch.testing.assert_close(normalized_inverse(T), exact / exact[:, 2:3, 2:3])
    assert spatial_cycle_loss(T, exact).item() < 1e-6
    assert spatial_cycle_loss(T, T).item() > 1e-3
    assert spatial_cycle_loss(T, torch.eye(3).expand(4, 3, 3)).item() > 1e-3


def test_contrastive_loss_pulls_positives_and_pushes_negatives_within_the_margin():
    a = torch.zeros(2, 3)
    b = torch.tensor([[3.0, 0, 0], [0.5, 0, 0]])
    assert contrastive(a, b, True, 2.0).item() == pytest.approx((9 + 0.25) / 2)
    assert contrastive(a, b, False, 2.0).item() == pytest.approx((0 + 1.5 ** 2) / 2)


def test_gradient_penalty_is_zero_for_a_unit_slope_critic():
    critic = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(12, 1, bias=False))
    with torch.no_grad():
        critic[1].weight.zero_()
        critic[1].weight[0, 0] = 1.0
    e = torch.rand(5, generator=torch.Generator().manual_seed(0))
    real, fake = torch.randn(5, 3, 2, 2), torch.randn(5, 3, 2, 2)
    assert gradient_penalty(critic, real, fake, e).item() == pytest.approx(0.0, abs=1e-12)
    with torch.no_grad():
        critic[1].weight.mul_(3)
    assert gradient_penalty(critic, real, fake, e).item() == pytest.approx(4.0)


@pytest.mark.gpu
def test_spatial_cycle_loss_does_not_wait_for_the_gpu(no_gpu_wait):
    # Three inverses a step: torch.linalg.inv would synchronize for each (its singularity check).
    T = homography_from_params(torch.randn(4, 8, device="cuda") * 0.1).requires_grad_(True)
    back = homography_from_params(torch.randn(4, 8, device="cuda") * 0.1)
    with no_gpu_wait():
        loss = spatial_cycle_loss(T, back)
        loss.backward()
    assert loss.item() > 0 and T.grad.abs().sum().item() > 0
