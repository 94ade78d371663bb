"""DG-Net's networks: the shape of every module's output, the fused AdaIN path against the reference, and the
parameter count per module at the published width."""
import pytest
import torch
import torch.nn.functional as F

from reidfast import ops
from reidfast.models.dgnet import (ASPP, AdaINParams, AppearanceEncoder, Decoder, DilatedConv2d, Generator,
                                   LayerNorm2d, MultiScaleDiscriminator, PatchDiscriminator, StructureEncoder,
                                   parameter_counts)
from reidfast.ops import _extension

H, W, N, K = 64, 32, 2, 5
WIDTH, BACKBONE_WIDTH = 0.25, 4  # Es/G/D channels x0.25; ResNet-50 of base width 4 (128-channel maps)


@pytest.fixture(scope="module")
def ea():
    return AppearanceEncoder(K, backbone_width=BACKBONE_WIDTH, pretrained="none", log=lambda m: None)


def test_structure_encoder_shapes():
    es = StructureEncoder(WIDTH)
    images = torch.randn(N, 3, H, W)
    s = es(images)
    assert s.shape == (N, 32, H // 4, W // 4)
    # the input is the channel mean: a 3-channel image and its gray version give the same code
    assert torch.allclose(es(images.mean(1, keepdim=True)), s)
    assert es.aspp.out_channels == 2 * 16
    assert StructureEncoder().code_channels == 128
    with pytest.raises(ValueError, match="StructureEncoder"):
        es(torch.randn(N, 2, H, W))


def test_aspp_and_layer_norm_shapes():
    assert ASPP(8)(torch.randn(N, 8, 16, 8)).shape == (N, 16, 16, 8)
    assert LayerNorm2d(6)(torch.randn(N, 6, 4, 3) * 3 + 1).shape == (N, 6, 4, 3)


def test_generator_and_discriminator_start_from_the_published_initialization():
    torch.manual_seed(0)
    gen, dis = Generator(code_features=4 * 64, width=0.5), MultiScaleDiscriminator(width=0.5)
    layers = lambda net: [m for m in net.modules() if isinstance(m, (torch.nn.Conv2d, torch.nn.Linear))]  # noqa
    for m in layers(gen):  # kaiming normal, fan_in, gain sqrt(2); biases 0
        fan_in = m.weight[0].numel()
        if m.weight.numel() >= 2000:
            assert m.weight.std().item() == pytest.approx((2 / fan_in) ** 0.5, rel=0.1), m
        assert m.bias is None or not m.bias.any()
    # every convolution of Es counts, its dilated ones included
    assert sum(isinstance(m, DilatedConv2d) for m in gen.encoder.modules()) == 3
    weights = torch.cat([m.weight.flatten() for m in layers(dis)])
    assert weights.std().item() == pytest.approx(0.02, rel=0.05) and abs(weights.mean().item()) < 1e-3
    assert not any(m.bias.any() for m in layers(dis) if m.bias is not None)


def test_aspp_pads_by_reflection_where_the_map_allows_and_by_zeros_below():
    # the published ASPP reflects at every rate (its 64x32 maps at 256x128); a reflection needs a pad smaller than
    # each side, so on smaller maps (the CPU preset's 16x8 at rate 9) the padding is zeros
    torch.manual_seed(0)
    conv = DilatedConv2d(3, 4, 3, padding=6, dilation=6)
    assert set(conv.state_dict()) == set(torch.nn.Conv2d(3, 4, 3).state_dict())
    for size, mode in (((12, 7), "reflect"), ((12, 6), "constant"), ((6, 12), "constant")):
        x = torch.randn(2, 3, *size)
        want = F.conv2d(F.pad(x, (6, 6, 6, 6), mode=mode), conv.weight, conv.bias, dilation=6)
        torch.testing.assert_close(conv(x), want, msg=f"{size}")
    rates = [m.dilation for m in ASPP(8).modules() if isinstance(m, DilatedConv2d)]
    assert rates == [(3, 3), (6, 6), (9, 9)]


def test_structure_code_and_aspp_branches_end_without_activation():
    # the published ASPP: each branch ends in instance norm (no activation), and its 1x1 fusion to the structure
    # code too: s is instance-normalized, with values as negative as positive, not passed through a LeakyReLU
    es = StructureEncoder(WIDTH)
    for branch in es.aspp.branches:
        assert isinstance(list(branch.modules())[-1], torch.nn.InstanceNorm2d)
    assert isinstance(es.project[-1], torch.nn.InstanceNorm2d)
    assert not any(isinstance(m, torch.nn.LeakyReLU) for m in es.project.modules())
    s = es(torch.randn(N, 3, H, W))
    assert torch.allclose(s.mean((2, 3)), torch.zeros(N, s.shape[1]), atol=1e-5)
    assert s.min() < -1


def test_structure_encoder_downsamples_at_its_first_and_fourth_conv():
    # the published encoder: 1-16 stride 2, 16-32, 32-32, 32-64 stride 2 (H/4 x W/4 either way; the strides
    # decide at which resolution the 32-channel convs run)
    convs = [m for m in StructureEncoder(WIDTH).stem.modules() if isinstance(m, torch.nn.Conv2d)]
    assert [c.stride for c in convs] == [(2, 2), (1, 1), (1, 1), (2, 2)]


def _layer_norm_2d_published(x, norm):
    # the published decoder's norm, written from its definition: unbiased std, eps added to the std
    flat = x.flatten(1)
    mean, std = flat.mean(1).view(-1, 1, 1, 1), flat.std(1).view(-1, 1, 1, 1)
    return (x - mean) / (std + norm.eps) * norm.weight.view(1, -1, 1, 1) + norm.bias.view(1, -1, 1, 1)


def test_layer_norm_2d_is_the_published_decoder_norm():
    torch.manual_seed(0)
    fresh = LayerNorm2d(64)
    # weight drawn uniform in [0, 1), bias at zero, as the published layer initializes them
    assert 0 <= fresh.weight.min() and fresh.weight.max() < 1 and fresh.weight.std() > 0.2
    assert torch.equal(fresh.bias, torch.zeros(64))
    norm = LayerNorm2d(5).double()
    with torch.no_grad():
        norm.weight.copy_(torch.rand(5) + 0.5)
        norm.bias.copy_(torch.randn(5))
    # a small sample, where unbiased and biased statistics differ by 4%, and eps matters next to its std
    x = (torch.randn(N, 5, 3, 2, dtype=torch.float64) * 1e-4 + 1).requires_grad_()
    y, y_pub = norm(x), _layer_norm_2d_published(x, norm)
    torch.testing.assert_close(y, y_pub)
    assert not torch.allclose(y, F.layer_norm(x, x.shape[1:], eps=norm.eps) * norm.weight.view(1, -1, 1, 1)
                              + norm.bias.view(1, -1, 1, 1), rtol=1e-3, atol=0)
    g = torch.randn_like(y)
    grads = torch.autograd.grad(y, [x, norm.weight, norm.bias], g)
    grads_pub = torch.autograd.grad(y_pub, [x, norm.weight, norm.bias], g)
    for got, want in zip(grads, grads_pub):
        torch.testing.assert_close(got, want)
    torch.autograd.gradcheck(norm, ((torch.randn(N, 5, 3, 2, dtype=torch.float64) * 3 + 1).requires_grad_(),))
    # a constant sample: the output is the bias, and its gradient is finite
    flat = torch.full((1, 5, 2, 2), 3.0, dtype=torch.float64, requires_grad=True)
    out = norm(flat)
    torch.testing.assert_close(out, norm.bias.view(1, -1, 1, 1).expand_as(out))
    (grad,) = torch.autograd.grad(out.square().sum(), flat)
    assert torch.isfinite(grad).all()


def test_layer_norm_2d_under_bf16_autocast_keeps_float32_statistics():
    norm = LayerNorm2d(4)
    x = torch.randn(N, 4, 8, 4) * 2 + 3
    with torch.autocast("cpu", dtype=torch.bfloat16):
        y = norm(x.bfloat16())
    assert y.dtype == torch.float32
    torch.testing.assert_close(y, _layer_norm_2d_published(x.bfloat16().float(), norm))


def test_appearance_encoder_shapes(ea):
    images = torch.randn(N + 1, 3, H, W)
    code, primary, fine = ea(images)
    channels = ea.backbone.out_channels
    assert channels == 32 * BACKBONE_WIDTH
    assert code.shape == (N + 1, 4 * channels) and ea.code_features == 4 * channels
    assert primary.shape == fine.shape == (N + 1, K)
    # last stride 1: the map is H/16 x W/16, and the code is its max over 4 horizontal stripes
    fmap = ea.backbone(images)
    assert fmap.shape[-2:] == (H // 16, W // 16)
    stripes = fmap.view(N + 1, channels, 4, -1, W // 16).amax((3, 4))
    assert torch.equal(code, stripes.flatten(1))
    assert ea.primary.dropout.p == 0.5 and ea.fine.dropout.p == 0.75
    ea.eval()
    f = ea.features(images)
    ea.train()
    assert f.shape == (N + 1, 1024)
    assert torch.allclose(f[:, :512].norm(dim=1), torch.ones(N + 1), atol=1e-5)
    assert torch.allclose(f[:, 512:].norm(dim=1), torch.full((N + 1,), 0.5), atol=1e-5)


def test_test_feature_normalizes_each_view_before_the_flip_sum(ea):
    # per head: normalize(normalize(e(x)) + normalize(e(flip x))), the fine half x0.5 (the published test script);
    # the two views' bottlenecks have different norms, so summing them before normalizing gives another feature
    torch.manual_seed(3)
    images = torch.randn(N, 3, H, W)
    ea.eval()
    with torch.no_grad():
        f = ea.features(images)
        views = []
        for x in (images, images.flip(3)):
            pooled = ea.backbone(x).amax(dim=(2, 3))
            views.append([F.normalize(head.embed(pooled), dim=1) for head in (ea.primary, ea.fine)])
    ea.train()
    expected = torch.cat([F.normalize(views[0][0] + views[1][0], dim=1),
                          0.5 * F.normalize(views[0][1] + views[1][1], dim=1)], dim=1)
    torch.testing.assert_close(f, expected, rtol=1e-5, atol=1e-6)


def test_generator_shapes(ea):
    gen = Generator(ea.code_features, WIDTH)
    dim = gen.decoder.dim
    code = torch.randn(N, ea.code_features)
    styles = gen.mlp(code)
    assert [s.shape for s in styles] == [(N, 4 * dim)] * 4 and gen.decoder.style_sizes == [4 * dim] * 4
    s = gen.encode(torch.randn(N, 3, H, W))
    out = gen.decode(s, code)
    assert out.shape == (N, 3, H, W)
    # no tanh: the raw 1x1 conv is the output (normalized images are not bounded by [-1, 1])
    assert isinstance(gen.decoder.out[-1], torch.nn.Conv2d)
    assert not any(isinstance(m, torch.nn.Tanh) for m in gen.modules())
    with pytest.raises(ValueError, match="AdaINParams"):
        gen.mlp(torch.randn(N, 7))
    with pytest.raises(ValueError, match="style tensors"):
        gen.decoder(s, styles[:3])


def test_each_adain_block_reads_its_own_quarter_of_the_code():
    # the published generator: ResBlock i's AdaIN weights and biases come from MLPs over code[:, i*C:(i+1)*C]
    # (C = 2048 of the 8192-d code), not over the whole code
    mlp = AdaINParams(64, 8, blocks=4, width=WIDTH)
    assert [m.net[0].in_features for m in (*mlp.weights, *mlp.biases)] == [16] * 8
    code = torch.randn(N, 64)
    styles = mlp(code)
    for i in range(4):
        changed = code.clone()
        changed[:, 16 * i:16 * (i + 1)] += 1.0
        moved = [not torch.equal(a, b) for a, b in zip(styles, mlp(changed))]
        assert moved == [j == i for j in range(4)], (i, moved)
    with pytest.raises(ValueError, match="multiple of blocks"):
        AdaINParams(66, 8, blocks=4)


def test_discriminator_shapes():
    d = MultiScaleDiscriminator(WIDTH)
    outs = d(torch.randn(N, 3, H, W))
    assert [o.shape for o in outs] == [(N, 1, H // 4, W // 4), (N, 1, H // 8, W // 8), (N, 1, H // 16, W // 16)]
    assert len(d.scales) == 3 and isinstance(d.scales[0], PatchDiscriminator)


@pytest.mark.skipif(not _extension.has_cpu_kernels(), reason="reidfast._C not built")
def test_fused_adain_path_equals_reference():
    torch.manual_seed(1)
    dec = Decoder(WIDTH).double()
    mlp = AdaINParams(64, dec.dim, width=WIDTH).double()
    s = torch.randn(N, dec.dim, 8, 4, dtype=torch.float64, requires_grad=True)
    code = torch.randn(N, 64, dtype=torch.float64, requires_grad=True)

    def run(backend):
        with ops.use_backend(backend):
            assert ops.resolve_backend("adain", s.device) == backend
            out = dec(s, mlp(code))
        grads = torch.autograd.grad(out.square().sum(), [s, code, dec.blocks[0].conv1.weight])
        return out, grads

    fused, fused_grads = run("cpu")
    ref, ref_grads = run("reference")
    torch.testing.assert_close(fused, ref)
    for a, b in zip(fused_grads, ref_grads):
        torch.testing.assert_close(a, b)


def test_parameter_counts_at_the_published_width(capsys):
    ea = AppearanceEncoder(751, pretrained="none", log=lambda m: None)  # Market-1501's 751 training ids
    gen = Generator(ea.code_features)
    modules = {"Ea (ResNet-50 + 2 heads)": ea, "Es": gen.encoder, "G (decoder)": gen.decoder,
               "AdaIN MLPs": gen.mlp, "D (3 scales)": MultiScaleDiscriminator()}
    counts = parameter_counts(modules)
    with capsys.disabled():
        print("\nDG-Net parameters: " + ", ".join(f"{k} {v / 1e6:.3f}M" for k, v in counts.items()))
    assert ea.code_features == 8192
    # ResNet-50 trunk without fc: 23,508,032; each ClassBlock 2048*512+512 + 2*512 + 512*751+751
    head = 2048 * 512 + 512 + 2 * 512 + 512 * 751 + 751
    assert counts["Ea (ResNet-50 + 2 heads)"] == 23_508_032 + 2 * head
    # 8 MLPs of 2048-512-512-256, each on its 2048-d quarter of the code
    assert counts["AdaIN MLPs"] == 8 * (2048 * 512 + 512 + 512 * 512 + 512 + 512 * 256 + 256)
    # one D scale: convs 3-32 (1x1), 3x 32-32 (3x3), 32-64 (3x3), 8 convs 64-64 (3x3), 64-1 (1x1)
    scale = (3 * 32 + 32) + 3 * (32 * 32 * 9 + 32) + (32 * 64 * 9 + 64) + 8 * (64 * 64 * 9 + 64) + (64 + 1)
    assert counts["D (3 scales)"] == 3 * scale


def test_info_prints_the_parameter_count_per_module(capsys):
    from reidfast.info import main
    main(["--model", "dgnet"])
    out = capsys.readouterr().out
    assert "23,508,032" in out  # ResNet-50 without fc
    assert f"{8 * (2048 * 512 + 512 + 512 * 512 + 512 + 512 * 256 + 256):,}" in out
    with capsys.disabled():
        print("\n" + out)
