import pytest
import torch

from reidfast.data import (BatchAugment, DatasetFormatError, DomainPairDataset, IdentityBalancedBatchSampler,
                           ImageDataset, MaskReader, Sample, UnpairedDomainSampler, get_dataset, make_loader,
                           read_keypoints_csv)


@pytest.fixture(scope="module")
def tiny(synthetic_root):
    return get_dataset("synthetic", synthetic_root)


def test_items_are_uint8_with_labels_keypoints_and_masks(tiny, synthetic_root):
    poses = read_keypoints_csv(tiny.keypoints_csv)
    ds = ImageDataset(tiny.train, size=(128, 64), keypoints=poses, masks=MaskReader(tiny.masks_dir))
    item = ds[0]
    assert item["image"].dtype == torch.uint8 and item["image"].shape == (3, 128, 64)
    assert item["pid"].item() == tiny.train[0].pid and item["camid"].item() == tiny.train[0].camid
    assert item["mask"].shape == (1, 128, 64) and set(item["mask"].unique().tolist()) <= {0, 1}
    # the files are 64x32, so keypoints follow the 2x resize
    original = poses[tiny.train[0].path.rsplit("/", 1)[1]]
    visible = (original >= 0).all(1)
    torch.testing.assert_close(item["keypoints"][visible], torch.from_numpy(original[visible] * 2))
    assert (item["keypoints"][~torch.from_numpy(visible)] == -1).all()
    pair = ds[(0, 1)]
    assert pair["image"].shape == (2, 3, 128, 64) and pair["pid"].shape == (2,)
    with pytest.raises(KeyError, match="no keypoints"):
        ImageDataset(tiny.train, keypoints={})[0]


def test_images_resize_with_the_filter_asked_for(tiny):
    # DG-Net's published pipeline resizes bicubically, torchreid's bilinearly: the method chooses, for training
    # and test images alike (Method.resize_filter)
    import numpy as np
    from PIL import Image

    from reidfast.train.dgnet import DGNet
    from reidfast.train.loop import Method
    path = tiny.train[0].path
    with Image.open(path) as img:
        want = {name: np.asarray(img.convert("RGB").resize((64, 128), f))
                for name, f in (("bilinear", Image.BILINEAR), ("bicubic", Image.BICUBIC))}
    got = {name: ImageDataset(tiny.train, size=(128, 64), resize_filter=name)[0]["image"].permute(1, 2, 0).numpy()
           for name in want}
    assert all((got[name] == want[name]).all() for name in want)
    assert not (got["bilinear"] == got["bicubic"]).all()
    assert (Method.resize_filter, DGNet.resize_filter) == ("bilinear", "bicubic")
    with pytest.raises(ValueError, match="resize_filter must be one of bilinear, bicubic, got 'nearest'"):
        ImageDataset(tiny.train, resize_filter="nearest")


@pytest.mark.parametrize("content", [b"not an image", b"\xff\xd8\xff\xe0 truncated jpeg"])
def test_unreadable_image_names_the_file(tmp_path, content):
    path = tmp_path / "0001_c1s1_000001_00.jpg"
    path.write_bytes(content)
    with pytest.raises(DatasetFormatError, match=f"{path}: cannot be read as an image"):
        ImageDataset([Sample(str(path), 1, 0)], size=(8, 4))[0]


def test_worker_loader_with_pk_batches_and_augmentation(tiny_params, tiny):
    sampler = IdentityBalancedBatchSampler(tiny.train, num_ids=2, num_instances=2, seed=0)
    size = (tiny_params["height"], tiny_params["width"])
    loader = make_loader(ImageDataset(tiny.train, size=size), batch_sampler=sampler, num_workers=2)
    assert loader.pin_memory == torch.cuda.is_available()
    batches = list(loader)
    assert len(batches) == len(sampler)
    images, pids = batches[0]["image"], batches[0]["pid"]
    assert images.shape == (4, 3, tiny_params["height"], tiny_params["width"]) and images.dtype == torch.uint8
    assert sorted(torch.bincount(pids).tolist())[-2:] == [2, 2]
    out = BatchAugment()(images, torch.Generator().manual_seed(0))
    assert out.shape == images.shape and out.dtype == torch.float32
    with pytest.raises(ValueError, match="batch_sampler excludes"):
        make_loader(ImageDataset(tiny.train), batch_size=4, batch_sampler=sampler)


def test_domain_pairs(tiny):
    source = ImageDataset(tiny.train, size=(32, 16))
    target = ImageDataset(tiny.query, size=(32, 16))
    sampler = UnpairedDomainSampler(len(source), len(target), seed=0)
    loader = make_loader(DomainPairDataset(source, target), batch_size=3, sampler=sampler, num_workers=0)
    batch = next(iter(loader))
    assert batch["source"]["image"].shape == (3, 3, 32, 16) and batch["target"]["image"].shape == (3, 3, 32, 16)
    with pytest.raises(TypeError, match="pair"):
        DomainPairDataset(source, target)[0]
