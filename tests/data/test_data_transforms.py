import pytest
import torch

from reidfast.data import BatchAugment, normalize


def batch(seed=0, b=6, h=16, w=8):
    return torch.randint(0, 256, (b, 3, h, w), generator=torch.Generator().manual_seed(seed), dtype=torch.uint8)


def test_deterministic_for_a_generator_seed():
    images = batch()
    augment = BatchAugment()
    a = augment(images, torch.Generator().manual_seed(7))
    b = augment(images, torch.Generator().manual_seed(7))
    c = augment(images, torch.Generator().manual_seed(8))
    assert a.shape == images.shape and a.dtype == torch.float32
    torch.testing.assert_close(a, b)
    assert not torch.equal(a, c)


def test_flip_only_and_identity():
    images = batch()
    torch.testing.assert_close(BatchAugment(flip_p=1.0, pad=0, erase_p=0.0)(images), normalize(images.flip(-1)))
    torch.testing.assert_close(BatchAugment(flip_p=0.0, pad=0, erase_p=0.0)(images), normalize(images))


@pytest.mark.parametrize("pad_mode, torch_mode", [("zeros", "constant"), ("edge", "replicate")])
def test_pad_and_crop_match_a_per_sample_reference(pad_mode, torch_mode):
    images = batch()
    augment = BatchAugment(flip_p=0.5, pad=3, erase_p=0.0, pad_mode=pad_mode)
    result = augment.apply(images, [images[:, :1]], generator=torch.Generator().manual_seed(1))
    assert result.flipped.any() and not result.flipped.all()
    assert (result.offsets != 3).any()  # crops reaching into the padding
    padded = torch.nn.functional.pad(images.float() / 255, (3, 3, 3, 3), mode=torch_mode)
    crops = []
    for i, (x, y) in enumerate(result.offsets.tolist()):
        src = padded[i].flip(-1) if result.flipped[i] else padded[i]
        crops.append(src[:, y:y + 16, x:x + 8])
    torch.testing.assert_close(result.images, normalize(torch.stack(crops)))
    # an aligned tensor (a mask) of an integer dtype is padded and cropped the same way
    assert result.aligned[0].dtype == torch.uint8
    torch.testing.assert_close(result.aligned[0].float() / 255, torch.stack(crops)[:, :1])


def test_erasing_writes_one_rectangle_of_the_value_within_the_area_bounds():
    images = torch.full((32, 3, 20, 10), 200, dtype=torch.uint8)
    augment = BatchAugment(flip_p=0.0, pad=0, erase_p=1.0, erase_area=(0.1, 0.3), erase_value=-9.0)
    out = augment(images, torch.Generator().manual_seed(0))
    erased = out[:, 0] == -9.0
    assert (erased == (out[:, 1] == -9.0)).all()  # same region in every channel
    areas = erased.flatten(1).sum(1).float() / 200
    assert (areas > 0).float().mean() > 0.9  # almost every sample finds a rectangle that fits
    for region in erased[areas > 0]:
        rows, cols = region.any(1).nonzero().flatten(), region.any(0).nonzero().flatten()
        box = region[rows.min():rows.max() + 1, cols.min():cols.max() + 1]
        assert box.all()  # one solid rectangle
    assert ((areas[areas > 0] >= 0.07) & (areas[areas > 0] <= 0.36)).all()  # rounding of h, w aside
    assert not BatchAugment(erase_p=0.0, pad=0, flip_p=0.0)(images).eq(-9.0).any()


def test_channels_last_images_come_back_channels_last_with_the_same_values():
    # A GPU run's networks take channels_last batches; an augmentation that handed back the other layout cost a
    # conversion before the first convolution and, under torch.compile, a second graph of the network.
    images = normalize(batch())
    for augment in (BatchAugment(), BatchAugment(flip_p=0.0, pad=0, erase_p=1.0, mean=(0.0,) * 3, std=(1.0,) * 3)):
        plain = augment(images, torch.Generator().manual_seed(3))
        last = augment(images.contiguous(memory_format=torch.channels_last), torch.Generator().manual_seed(3))
        assert last.is_contiguous(memory_format=torch.channels_last)
        torch.testing.assert_close(last, plain, rtol=0, atol=0)


def test_erase_only_augmentation_changes_nothing_outside_the_erased_boxes():
    # flip_p=0, pad=0, mean 0, std 1 (DG-Net's erasing of normalized images): the crop and the normalization are
    # the identity and skipped; the result is a new tensor, equal to the input outside the boxes, bit for bit
    images = torch.randn(16, 3, 20, 10, generator=torch.Generator().manual_seed(0))
    augment = BatchAugment(flip_p=0.0, pad=0, erase_p=1.0, erase_value=0.0, mean=(0.0,) * 3, std=(1.0,) * 3)
    out = augment(images, torch.Generator().manual_seed(1))
    erased = (out == 0).all(1, keepdim=True).expand_as(out)
    assert erased.any() and not erased.all()
    assert torch.equal(out[~erased], images[~erased])
    untouched = BatchAugment(flip_p=0.0, pad=0, erase_p=0.0, mean=0.0, std=1.0)(images)
    assert torch.equal(untouched, images) and untouched.data_ptr() != images.data_ptr()


def test_erasing_by_draws_made_apart_is_the_augmentations_erasing():
    # a compiled training step (DG-Net's) erases by draws made outside its graph: the same rectangles, from the same
    # random stream, as the augmentation erasing on its own; traced whole by torch.compile
    images = torch.randn(32, 3, 20, 12, generator=torch.Generator().manual_seed(0))
    augment = BatchAugment(flip_p=0.0, pad=0, erase_p=0.6, erase_value=(1.0, 2.0, 3.0), mean=(0.0,) * 3,
                           std=(1.0,) * 3)
    expected = augment(images, torch.Generator().manual_seed(7))
    g = torch.Generator().manual_seed(7)
    torch.rand(32, generator=g), torch.rand((32, 2), generator=g)  # the flip and crop draws the augmentation makes
    draws = augment.erase_draws(32, g)
    assert draws.shape == (32, 23) and 0 <= draws.min() and draws.max() < 1
    erased = augment.erase_with(images, draws)
    assert torch.equal(erased, expected)
    changed = (erased != images).any(1).flatten(1).any(1)
    assert 0 < changed.sum() < 32  # erase_p 0.6: some images keep every pixel
    compiled = torch.compile(augment.erase_with, backend="aot_eager", fullgraph=True)
    assert torch.equal(compiled(images, draws), expected)
    with pytest.raises(ValueError, match=r"erase draws must be \(32, 23\)"):
        augment.erase_with(images, draws[:, :20])
    with pytest.raises(ValueError, match="erase_value='random'"):
        BatchAugment(erase_value="random").erase_with(images, draws)


def test_aligned_masks_and_keypoints_follow_the_images():
    b, h, w = 8, 16, 8
    images = torch.zeros(b, 3, h, w, dtype=torch.uint8)
    keypoints = torch.full((b, 18, 2), -1.0)
    g = torch.Generator().manual_seed(0)
    for i in range(b):  # one bright pixel per sample at the right shoulder's position
        x, y = torch.randint(2, w - 2, (1,), generator=g).item(), torch.randint(2, h - 2, (1,), generator=g).item()
        images[i, :, y, x] = 255
        keypoints[i, 2] = torch.tensor([float(x), float(y)])
    masks = (images[:, :1] > 0).to(torch.uint8)
    augment = BatchAugment(flip_p=0.5, pad=2, erase_p=0.0)
    result = augment.apply(images, aligned=[masks], generator=torch.Generator().manual_seed(3))
    moved = augment.transform_keypoints(keypoints, result, w)
    assert torch.equal(result.aligned[0].bool(), result.images[:, :1] > 0)
    for i in range(b):
        slot = 5 if result.flipped[i] else 2  # a flip makes the right shoulder the left one
        x, y = moved[i, slot].tolist()
        if x < 0:
            assert not result.aligned[0][i].any()  # cropped out together with the pixel
        else:
            assert result.aligned[0][i, 0, int(y), int(x)] == 1
    plain = augment.transform_keypoints(keypoints, result, w, swap_left_right=False)
    assert (plain[:, 5] == -1).all()


def test_argument_errors():
    with pytest.raises(ValueError, match="flip_p"):
        BatchAugment(flip_p=2)
    with pytest.raises(ValueError, match=r"\(B, C, H, W\)"):
        BatchAugment()(torch.zeros(3, 8, 4, dtype=torch.uint8))
    with pytest.raises(ValueError, match="aligned"):
        BatchAugment().apply(torch.zeros(2, 3, 8, 4), aligned=[torch.zeros(2, 1, 4, 4)])


def test_normalize_round_trip_and_channel_values():
    from reidfast.data.transforms import channel_values, denormalize, normalize
    images = torch.rand(2, 3, 5, 4)
    torch.testing.assert_close(denormalize(normalize(images)), images)
    wide = normalize(images) * 10  # far outside [0, 1] once denormalized
    assert denormalize(wide).max() <= 1 and denormalize(wide, clamp=False).max() > 1
    assert channel_values(0.5, images.double()).shape == (1, 1, 1, 1)
    assert channel_values([1, 2, 3], images.double()).dtype == torch.float64


@pytest.mark.gpu
def test_normalizing_a_gpu_batch_does_not_wait_for_the_gpu(no_gpu_wait):
    # A blocking copy of the per-channel constants would stall the host once per normalized batch.
    from reidfast.data.transforms import BatchAugment, normalize
    images = torch.randint(0, 256, (4, 3, 16, 8), dtype=torch.uint8, device="cuda")
    generator = torch.Generator(device="cuda").manual_seed(0)
    with no_gpu_wait():
        normalize(images)
        BatchAugment(erase_p=1.0)(images, generator)


def test_erasing_aspect_ratio_is_log_uniform_by_default_and_linear_on_request():
    # torchvision's RandomErasing draws log(ratio) uniformly (as many wide boxes as tall ones); the original random
    # erasing, and FD-GAN's eraser, draw the ratio itself: mostly tall boxes (h / w > 1 about 77% of the time)
    images = torch.zeros((2000, 1, 64, 64), dtype=torch.uint8)
    tall = {}
    for scale in ("log", "linear"):
        augment = BatchAugment(flip_p=0.0, pad=0, erase_p=1.0, erase_area=(0.02, 0.2), erase_ratio=(0.3, 1 / 0.3),
                               erase_value=5.0, erase_ratio_scale=scale, mean=(0.0,), std=(1.0,))
        erased = augment(images, torch.Generator().manual_seed(0))[:, 0] == 5.0
        h, w = erased.any(2).sum(1), erased.any(1).sum(1)
        tall[scale] = (h > w).float().mean().item()
    assert 0.42 < tall["log"] < 0.58 and 0.7 < tall["linear"] < 0.84
    with pytest.raises(ValueError, match="erase_ratio_scale must be 'log' or 'linear'"):
        BatchAugment(erase_ratio_scale="uniform")


def test_random_resized_rect_crop_cuts_a_box_and_resizes_it():
    from reidfast.data import RandomResizedRectCrop
    crop = RandomResizedRectCrop()
    # a horizontal ramp: a box of it, resized, is again a ramp, from the box's left edge to its right
    ramp = torch.arange(32, dtype=torch.float32).view(1, 1, 1, 32).expand(64, 1, 64, 32) / 31
    out = crop(ramp, torch.Generator().manual_seed(0))
    assert out.shape == ramp.shape and out.dtype == torch.float32
    torch.testing.assert_close(out, out[:, :, :1].expand_as(out))  # each output row: the same columns of the ramp
    widths = out[:, 0, 0, -1] - out[:, 0, 0, 0]
    assert (widths <= 1 + 1e-6).all() and (widths < 0.99).any()  # boxes narrower than the image
    assert not torch.allclose(out, ramp)
    # every box: area at least 0.64 of the image and aspect ratio 2-3, else the image stays whole (here a 64x32
    # image: ratio 2 at full area fits, larger ratios need a smaller width)
    box = torch.rand(8, 3, 64, 32)
    torch.testing.assert_close(RandomResizedRectCrop(area=(1.0, 1.0), ratio=(2.0, 2.0))(box), box)
    # uint8 in, floats in [0, 1] out
    images = torch.randint(0, 256, (4, 3, 64, 32), dtype=torch.uint8)
    cropped = crop(images, torch.Generator().manual_seed(1))
    assert cropped.dtype == torch.float32 and 0 <= cropped.min() and cropped.max() <= 1
    with pytest.raises(ValueError, match="area must satisfy"):
        RandomResizedRectCrop(area=(0.0, 1.0))
