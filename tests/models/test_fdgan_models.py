"""FD-GAN's networks: shapes, the generator's image range, per-branch BatchNorm in one batched pass, D_id's
initialisation from stage I."""
import pytest
import torch

from reidfast.data import normalize
from reidfast.models.fdgan import (IdentityDiscriminator, ImageEncoder, PoseDiscriminator, PoseEncoder,
                                   PoseGenerator, Verifier, from_generator_range, to_generator_range)
from reidfast.models.init import init_weights
from reidfast.nn import SplitBatchNorm2d, batchnorm_groups

H, W = 64, 32


def quiet(message):
    pass


def test_shapes_of_every_network():
    x = torch.randn(3, 3, H, W)
    e = ImageEncoder(width=4, pretrained="none", log=quiet)
    f = e(x)
    assert f.shape == (3, 128) and e.out_features == 128  # 32 * width (2048 at width 64)
    assert Verifier(128)(f, f.flip(0)).shape == (3, 2)
    pose = torch.rand(3, 18, H, W)
    assert PoseEncoder(H, W, 0.125)(pose).shape == (3, 128)
    g = PoseGenerator(128, H, W, gan_width=0.125)
    y = g(f, pose, torch.randn(3, 256))
    assert y.shape == (3, 3, H, W) and y.abs().max() <= 1  # tanh: generator range
    d_id = IdentityDiscriminator(width=4)
    assert d_id(x, x.flip(0)).shape == (3,)
    d_pd = PoseDiscriminator(0.125)
    assert d_pd.net[0].in_channels == 21
    patches = d_pd(y, pose)
    assert patches.shape[:2] == (3, 1) and patches.dim() == 4


def test_generator_and_pose_discriminator_start_from_the_published_initialization():
    # weights N(0, 0.02) (linear, conv and transposed conv), BatchNorm scales N(1, 0.02) and shifts 0; biases keep
    # PyTorch's default, which the published initialization does not touch
    torch.manual_seed(0)
    for net in (PoseGenerator(128, H, W, gan_width=0.5), PoseDiscriminator(0.5)):
        weighted = [m for m in net.modules()
                    if isinstance(m, (torch.nn.Conv2d, torch.nn.ConvTranspose2d, torch.nn.Linear))]
        weights = torch.cat([m.weight.flatten() for m in weighted])
        assert weights.std().item() == pytest.approx(0.02, rel=0.05) and abs(weights.mean().item()) < 1e-3
        norms = [m for m in net.modules() if isinstance(m, torch.nn.modules.batchnorm._BatchNorm)]
        scales = torch.cat([m.weight for m in norms])
        assert scales.mean().item() == pytest.approx(1.0, abs=0.01)
        assert scales.std().item() == pytest.approx(0.02, rel=0.3)
        assert not torch.cat([m.bias for m in norms]).any()
    assert PoseDiscriminator(0.5).net[-1].bias.abs().sum() > 0  # the patch logit's bias: PyTorch's default
    with pytest.raises(ValueError, match="scheme must be 'kaiming' or 'gaussian'"):
        init_weights(PoseDiscriminator(0.5), "xavier")


def test_generator_follows_the_published_pre_activation_layout():
    # the published decoder starts with a ReLU on [visual, pose feature, noise]: negative noise (and pose feature)
    # values do not reach it; the pose feature is the encoder's BatchNorm output, with no activation of its own
    torch.manual_seed(0)
    g = PoseGenerator(128, H, W, gan_width=0.125).eval()
    assert isinstance(list(g.pose_encoder.net)[-1], torch.nn.BatchNorm1d)
    visual, pose, noise = torch.rand(3, 128), torch.rand(3, 18, H, W), torch.randn(3, 256)
    with torch.no_grad():
        assert (g.pose_encoder(pose) < 0).any()
        torch.testing.assert_close(g(visual, pose, noise), g(visual, pose, noise.clamp(min=0)))
        assert not torch.allclose(g(visual, pose, noise), g(visual, pose, noise.abs()))
    # no bias where the published layers have none: the encoder's convolutions and G's last transposed conv
    convs = [m for m in g.modules() if isinstance(m, (torch.nn.Conv2d, torch.nn.ConvTranspose2d))]
    assert convs and all(m.bias is None for m in convs)


def test_image_sides_must_be_multiples_of_32():
    with pytest.raises(ValueError, match="multiples of 32"):
        PoseGenerator(128, 48, 32)


def test_generator_range_round_trip():
    pixels = torch.randint(0, 256, (2, 3, 8, 4), dtype=torch.uint8)
    normalized = normalize(pixels)
    torch.testing.assert_close(to_generator_range(normalized), pixels.float() / 255 * 2 - 1)
    torch.testing.assert_close(from_generator_range(to_generator_range(normalized)), normalized)


def test_split_batchnorm_equals_separate_calls():
    torch.manual_seed(0)
    e1 = ImageEncoder(width=4, pretrained="none", log=quiet)
    e2 = ImageEncoder(width=4, pretrained="none", log=quiet)
    e2.load_state_dict(e1.state_dict())
    assert any(isinstance(m, SplitBatchNorm2d) for m in e1.modules())
    a, b = torch.randn(4, 3, H, W), 3 + 2 * torch.randn(4, 3, H, W)  # different statistics per branch
    separate = torch.cat([e1(a), e1(b)])
    with batchnorm_groups(e2, 2):
        batched = e2(torch.cat([a, b]))
    torch.testing.assert_close(batched, separate, rtol=1e-4, atol=1e-5)
    for (name, x), y in zip(e1.state_dict().items(), e2.state_dict().values()):  # running statistics too
        torch.testing.assert_close(x, y, rtol=1e-5, atol=1e-6, msg=name)
    # one pass over both without groups would normalize them together: a different function
    e2.load_state_dict(e1.state_dict())
    assert not torch.allclose(e2(torch.cat([a, b])), separate, atol=1e-3)


def test_compiled_encoder_with_batchnorm_groups_equals_separate_calls():
    # Through dynamo and aot_autograd (aot_eager: no code generation), where SplitBatchNorm2d takes its grouped
    # pass. In float64: two float32 algorithms for the same statistics differ in the last bits, which 53 layers
    # normalizing 8 values each at the end amplify to about 1e-4.
    torch._dynamo.reset()
    torch.manual_seed(0)
    e1 = ImageEncoder(width=4, pretrained="none", log=quiet).double()
    e2 = ImageEncoder(width=4, pretrained="none", log=quiet).double()
    e2.load_state_dict(e1.state_dict())
    a, b = torch.randn(4, 3, H, W).double(), 3 + 2 * torch.randn(4, 3, H, W).double()
    separate = torch.cat([e1(a), e1(b)])
    compiled = torch.compile(e2, backend="aot_eager", fullgraph=True)
    with batchnorm_groups(e2, 2):
        batched = compiled(torch.cat([a, b]))
    torch._dynamo.reset()
    torch.testing.assert_close(batched, separate, rtol=1e-9, atol=1e-9)
    for (name, x), y in zip(e1.state_dict().items(), e2.state_dict().values()):
        torch.testing.assert_close(x, y, rtol=1e-9, atol=1e-9, msg=name)


def test_identity_discriminator_starts_as_the_verifier():
    torch.manual_seed(1)
    e = ImageEncoder(width=4, pretrained="none", log=quiet)
    v = Verifier(e.out_features)
    torch.nn.init.normal_(v.fc.weight, std=0.1)
    torch.nn.init.normal_(v.fc.bias, std=0.1)
    v.bn.running_mean.uniform_(0, 1)
    d_id = IdentityDiscriminator(width=4)
    d_id.init_from(e, v)
    for m in (e, v, d_id):
        m.eval()
    x1, x2 = torch.randn(5, 3, H, W), torch.randn(5, 3, H, W)
    with torch.no_grad():
        p_same = v.same_probability(e(x1), e(x2))
        torch.testing.assert_close(torch.sigmoid(d_id(x1, x2)), p_same, rtol=1e-4, atol=1e-6)
