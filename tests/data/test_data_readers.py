"""Readers on tiny hand-made trees with each dataset's real layout and naming."""
import argparse
import re
from pathlib import Path

import pytest

from reidfast.data import (DatasetFormatError, DatasetNotFoundError, ReidDataset, Sample, add_dataset_args,
                           dataset_from_args, get_dataset, list_datasets, register_dataset)
from reidfast.data.registry import _READERS, parse_dataset_options

MARKET_TRAIN = ["0002_c1s1_000451_03.jpg", "0002_c2s1_000301_01.jpg", "0007_c3s3_077419_03.jpg", "Thumbs.db"]
MARKET_QUERY = ["0001_c1s1_001051_00.jpg", "0003_c4s2_010101_00.jpg"]
MARKET_GALLERY = ["0001_c2s1_000301_01.jpg", "0003_c1s1_001051_02.jpg", "-1_c1s1_000401_03.jpg",
                  "0000_c6s1_001051_01.jpg"]


def make_market(touch_files, folder: Path, gallery=MARKET_GALLERY) -> Path:
    touch_files(folder / "bounding_box_train", MARKET_TRAIN)
    touch_files(folder / "query", MARKET_QUERY)
    touch_files(folder / "bounding_box_test", gallery)
    return folder


def triples(samples):
    return sorted((Path(s.path).name, s.pid, s.camid) for s in samples)


def test_market_labels_cameras_and_protocol_labels(touch_files, tmp_path):
    ds = get_dataset("market1501", make_market(touch_files, tmp_path / "Market-1501-v15.09.15"))
    assert isinstance(ds, ReidDataset) and all(isinstance(s, Sample) for s in ds.train)
    # train pids relabelled 0..K-1 in pid order; cameras 0-based; Thumbs.db ignored
    assert triples(ds.train) == [("0002_c1s1_000451_03.jpg", 0, 0), ("0002_c2s1_000301_01.jpg", 0, 1),
                                 ("0007_c3s3_077419_03.jpg", 1, 2)]
    assert triples(ds.query) == [("0001_c1s1_001051_00.jpg", 1, 0), ("0003_c4s2_010101_00.jpg", 3, 3)]
    # junk (-1) and distractor (0) gallery labels survive for the evaluation protocol
    assert triples(ds.gallery) == [("-1_c1s1_000401_03.jpg", -1, 0), ("0000_c6s1_001051_01.jpg", 0, 5),
                                   ("0001_c2s1_000301_01.jpg", 1, 1), ("0003_c1s1_001051_02.jpg", 3, 0)]
    assert ds.num_train_pids == 2 and ds.num_cameras == 6
    assert "train" in ds.summary()


@pytest.mark.parametrize("layout", ["", "Market-1501-v15.09.15", "market1501/Market-1501-v15.09.15", "market1501"])
def test_market_accepts_folder_and_torchreid_parent_layouts(touch_files, tmp_path, layout):
    make_market(touch_files, tmp_path / layout if layout else tmp_path)
    assert len(get_dataset("market", tmp_path).train) == 3


def test_missing_folder_error_names_expected_folder_and_contents(touch_files, tmp_path):
    touch_files(tmp_path / "something_else", ["x.jpg"])
    with pytest.raises(DatasetNotFoundError) as info:
        get_dataset("market1501", tmp_path)
    message = str(info.value)
    assert "bounding_box_train" in message and "Market-1501-v15.09.15" in message and "something_else" in message
    with pytest.raises(FileNotFoundError, match="not a folder"):
        get_dataset("market1501", tmp_path / "nope")


def test_empty_split_is_an_error_naming_the_split(touch_files, tmp_path):
    make_market(touch_files, tmp_path, gallery=["readme.txt"])
    with pytest.raises(DatasetFormatError, match="bounding_box_test.*holds no images"):
        get_dataset("market1501", tmp_path)


def test_malformed_names_raise_listing_them_or_are_skipped_when_not_strict(touch_files, tmp_path, caplog):
    make_market(touch_files, tmp_path, gallery=MARKET_GALLERY + ["0001_c9s1_000001_01.jpg", "copy of 0001.jpg"])
    with pytest.raises(DatasetFormatError) as info:
        get_dataset("market1501", tmp_path)
    assert "copy of 0001.jpg" in str(info.value) and "0001_c9s1_000001_01.jpg" in str(info.value)  # camera 9
    assert "--skip-misnamed" in str(info.value)  # what a command-line user can do about it
    ds = get_dataset("market1501", tmp_path, strict=False)
    assert len(ds.gallery) == len(MARKET_GALLERY)
    assert "skipped" in caplog.text
    # the command-line flag stands for strict=False
    args = add_dataset_args(argparse.ArgumentParser()).parse_args(
        ["--dataset", "market1501", "--data-root", str(tmp_path), "--skip-misnamed"])
    assert len(dataset_from_args(args).gallery) == len(MARKET_GALLERY)


def test_misnamed_images_of_every_split_are_reported_in_one_error(touch_files, tmp_path, caplog):
    """Two bad split folders: one error names both (else a user fixes one, reruns, and meets the other)."""
    make_market(touch_files, tmp_path, gallery=MARKET_GALLERY + ["copy of 0001.jpg"])
    touch_files(tmp_path / "bounding_box_train", ["0002_c7s1_000001_01.jpg", "IMG_0001.jpg"])
    with pytest.raises(DatasetFormatError) as info:
        get_dataset("market1501", tmp_path)
    assert str(info.value).startswith(
        f"market1501: 3 image(s) in 2 splits do not follow the naming 0002_c1s1_000451_03.jpg with cameras 1..6: "
        f"2 in {tmp_path / 'bounding_box_train'}: 0002_c7s1_000001_01.jpg, IMG_0001.jpg; "
        f"1 in {tmp_path / 'bounding_box_test'}: copy of 0001.jpg (--skip-misnamed")
    with caplog.at_level("WARNING"):
        ds = get_dataset("market1501", tmp_path, strict=False)
    assert (len(ds.train), len(ds.gallery)) == (3, len(MARKET_GALLERY))
    assert caplog.text.count("skipped") == 1 and "IMG_0001.jpg" in caplog.text and "copy of 0001.jpg" in caplog.text
    # MSMT17's list files are its splits
    folder = make_msmt(touch_files, tmp_path / "msmt", "V1")
    (folder / "list_query.txt").write_text("0000/0000_000_02_0113morning_0001_0.jpg\n")  # pid missing
    (folder / "list_gallery.txt").write_text("0000/0000_003_99_0113noon_0009_0.jpg 0\n")  # camera 99
    with pytest.raises(DatasetFormatError, match=re.escape("2 image(s) in 2 splits") + ".*"
                       + re.escape(f"1 in {folder / 'list_query.txt'}: line 1: ") + ".*"
                       + re.escape(f"1 in {folder / 'list_gallery.txt'}: line 1: ")):
        get_dataset("msmt17", folder)


def test_dukemtmc(touch_files, tmp_path):
    folder = tmp_path / "dukemtmc-reid" / "DukeMTMC-reID"
    touch_files(folder / "bounding_box_train", ["0001_c2_f0046182.jpg", "0005_c8_f0000001.jpg"])
    touch_files(folder / "query", ["0003_c1_f0000002.jpg"])
    touch_files(folder / "bounding_box_test", ["0003_c5_f0000003.jpg", "0004_c7_f0000009.jpg"])
    ds = get_dataset("dukemtmc", tmp_path)
    assert triples(ds.train) == [("0001_c2_f0046182.jpg", 0, 1), ("0005_c8_f0000001.jpg", 1, 7)]
    assert triples(ds.gallery)[1] == ("0004_c7_f0000009.jpg", 4, 6)
    # a Market name is malformed for Duke
    touch_files(folder / "query", ["0002_c1s1_000451_03.jpg"])
    with pytest.raises(DatasetFormatError, match="0001_c2_f0046182.jpg"):
        get_dataset("dukemtmc", tmp_path)


def make_msmt(touch_files, root: Path, version: str) -> Path:
    folder = root / "msmt17" / f"MSMT17_{version}"
    train_dir, test_dir = {"V1": ("train", "test"), "V2": ("mask_train_v2", "mask_test_v2")}[version]
    touch_files(folder / train_dir / "0000", ["0000_000_01_0303morning_0015_0.jpg", "0000_001_05_0303noon_0020_1.jpg"])
    touch_files(folder / train_dir / "0001", ["0001_000_15_0303morning_0100_0.jpg"])
    touch_files(folder / test_dir / "0000", ["0000_000_02_0113morning_0001_0.jpg", "0000_003_07_0113noon_0009_0.jpg"])
    (folder / "list_train.txt").write_text("0000/0000_000_01_0303morning_0015_0.jpg 0\n"
                                           "0001/0001_000_15_0303morning_0100_0.jpg 1\n")
    (folder / "list_val.txt").write_text("0000/0000_001_05_0303noon_0020_1.jpg 0\n")
    (folder / "list_query.txt").write_text("0000/0000_000_02_0113morning_0001_0.jpg 0\n")
    (folder / "list_gallery.txt").write_text("0000/0000_003_07_0113noon_0009_0.jpg 0\n")
    return folder


@pytest.mark.parametrize("version", ["V1", "V2"])
def test_msmt17_lists_versions_and_val(touch_files, tmp_path, version):
    folder = make_msmt(touch_files, tmp_path, version)
    ds = get_dataset("msmt17", tmp_path)
    assert ds.name == f"msmt17-{version.lower()}"
    assert [(s.pid, s.camid) for s in ds.train] == [(0, 0), (1, 14)]  # camera from the third name field
    assert ds.query[0].path.startswith(str(folder / ("test" if version == "V1" else "mask_test_v2")))
    assert [s.camid for s in ds.gallery] == [6]
    assert len(get_dataset("msmt17", tmp_path, use_val=True).train) == 3


def test_msmt17_errors(touch_files, tmp_path):
    folder = make_msmt(touch_files, tmp_path, "V1")
    with pytest.raises(DatasetNotFoundError, match="MSMT17_V2"):
        get_dataset("msmt17", tmp_path, version="V2")
    (folder / "list_query.txt").write_text("0000/0000_000_02_0113morning_0001_0.jpg\n")  # pid missing
    with pytest.raises(DatasetFormatError, match="line 1"):
        get_dataset("msmt17", tmp_path)


def test_msmt17_not_found_is_one_message_naming_both_versions(touch_files, tmp_path):
    """Without a version both layouts are looked for; their error is one sentence in the other readers' words,
    each folder tried named once, not the two versions' errors joined."""
    touch_files(tmp_path / "downloads", ["notes.txt"])
    with pytest.raises(DatasetNotFoundError) as info:
        get_dataset("msmt17", tmp_path)
    message = str(info.value)
    lists = "list_train.txt, list_query.txt, list_gallery.txt"
    assert message.startswith(f"msmt17: expected a folder holding train, test, {lists} (V1) or mask_train_v2, "
                              f"mask_test_v2, {lists} (V2); tried {tmp_path}, {tmp_path / 'MSMT17_V1'}, ")
    assert message.count(f"{tmp_path / 'msmt17'},") == 1 and str(tmp_path / "msmt17" / "MSMT17_V2") in message
    assert message.count(f"{tmp_path} holds: downloads.") == 1 and "|" not in message
    # a V2 folder that lacks a list: the fix names V2's missing file, not V1's folders, which it also lacks
    folder = make_msmt(touch_files, tmp_path, "V2")
    (folder / "list_gallery.txt").unlink()
    with pytest.raises(DatasetNotFoundError, match=re.escape(f"{folder} holds mask_train_v2, mask_test_v2, "
                                                             f"list_train.txt, list_query.txt but not "
                                                             f"list_gallery.txt: the dataset is incomplete")):
        get_dataset("msmt17", folder)


@pytest.mark.parametrize("variant", ["detected", "labeled"])
def test_cuhk03np_variants_and_layouts(touch_files, tmp_path, variant):
    for v, cam in (("detected", 1), ("labeled", 2)):
        folder = tmp_path / "cuhk03-np" / v
        touch_files(folder / "bounding_box_train", [f"0001_c{cam}_1.png", "0009_c2_3.png"])
        touch_files(folder / "query", ["0002_c1_1.png"])
        touch_files(folder / "bounding_box_test", ["0002_c2_4.png"])
    for root in (tmp_path, tmp_path / "cuhk03-np", tmp_path / "cuhk03-np" / variant):
        ds = get_dataset("cuhk03", root, variant=variant)
        assert ds.name == f"cuhk03-np-{variant}"
        assert ds.train[0].camid == (0 if variant == "detected" else 1)
        assert ds.train[0].path.startswith(str(tmp_path / "cuhk03-np" / variant))
    with pytest.raises(ValueError, match="variant"):
        get_dataset("cuhk03", tmp_path, variant="both")
    # no variant given (what --data-root does): the variant folder the root names, else the detected boxes
    assert get_dataset("cuhk03", tmp_path / "cuhk03-np" / variant).name == f"cuhk03-np-{variant}"
    assert get_dataset("cuhk03", tmp_path / "cuhk03-np").name == "cuhk03-np-detected"


def test_prid2011_split_and_distractors(touch_files, tmp_path):
    single = tmp_path / "prid2011" / "prid_2011" / "single_shot"
    touch_files(single / "cam_a", [f"person_{i:04d}.png" for i in range(1, 11)])
    touch_files(single / "cam_b", [f"person_{i:04d}.png" for i in list(range(1, 11)) + [201, 350]])
    ds = get_dataset("prid", tmp_path, num_train_ids=6, split_seed=1)
    assert len(ds.train) == 12 and ds.num_train_pids == 6
    assert {s.camid for s in ds.query} == {0} and {s.camid for s in ds.gallery} == {1}
    test_ids = {s.pid for s in ds.query}
    assert len(test_ids) == 4 and not test_ids & set(ds.info["train_ids"])
    assert {s.pid for s in ds.gallery} == test_ids | {201, 350}
    assert get_dataset("prid", single, num_train_ids=6, split_seed=1).query == ds.query  # deterministic
    assert get_dataset("prid", single, num_train_ids=6, split_seed=2).query != ds.query
    with pytest.raises(DatasetFormatError, match="num_train_ids"):
        get_dataset("prid", single, num_train_ids=10)


def test_dataset_options_from_the_command_line(touch_files, tmp_path):
    single = tmp_path / "prid2011" / "prid_2011" / "single_shot"
    touch_files(single / "cam_a", [f"person_{i:04d}.png" for i in range(1, 11)])
    touch_files(single / "cam_b", [f"person_{i:04d}.png" for i in range(1, 11)])
    parser = add_dataset_args(argparse.ArgumentParser())
    args = parser.parse_args(["--dataset", "prid", "--data-root", str(tmp_path),
                              "--dataset-option", "num_train_ids=6", "split-seed=2"])
    assert dataset_from_args(args).query == get_dataset("prid", tmp_path, num_train_ids=6, split_seed=2).query
    assert parse_dataset_options("msmt17", ["version=V2", "use_val=true"]) == {"version": "V2", "use_val": True}
    assert parse_dataset_options("CUHK03-NP", ["variant=labeled"]) == {"variant": "labeled"}
    for items, message in ((["split_seed"], "expected KEY=VALUE"),
                           (["variant=labeled"], "the prid reader takes no option 'variant' (its options: split_seed, "
                                                 "num_train_ids)"),
                           (["split_seed=two"], "--dataset-option split_seed=two: invalid literal"),
                           (["use_val=maybe"], "the prid reader takes no option 'use_val'")):
        with pytest.raises(ValueError, match=re.escape(message)):
            parse_dataset_options("prid", items)
    with pytest.raises(ValueError, match="expected true or false"):
        parse_dataset_options("msmt17", ["use_val=maybe"])


def test_registry_custom_dataset_names_and_cli_args(touch_files, tmp_path):
    @register_dataset("unit-test-set", "utset")
    def read_unit(root, flavour="plain"):
        return ReidDataset(f"unit-{flavour}", Path(root), [Sample("a.jpg", 0, 0)], [], [])

    try:
        assert "unit-test-set" in list_datasets()
        assert get_dataset("UTSET", tmp_path, flavour="x").name == "unit-x"
        with pytest.raises(ValueError, match="already registered"):
            register_dataset("utset")(lambda root: None)
        parser = add_dataset_args(argparse.ArgumentParser())
        args = parser.parse_args(["--dataset", "unit-test-set", "--data-root", str(tmp_path)])
        assert dataset_from_args(args).name == "unit-plain"
    finally:
        _READERS.pop("unit-test-set")
    with pytest.raises(ValueError, match="unknown dataset 'nope'.*market1501"):
        get_dataset("nope", tmp_path)
    with pytest.raises(ValueError, match="needs a data root"):
        get_dataset("market1501")


def test_person_masks_kept_beside_the_images_are_not_read_as_images(touch_files, tmp_path):
    """SA-GAN's sibling mask layout (<image stem>_mask.png in the split folder) leaves the splits as they were:
    Market-1501's names reject the masks as misnamed, and CUHK03-NP's pattern would take them for images."""
    from reidfast.data import MaskReader
    market = make_market(touch_files, tmp_path / "Market-1501-v15.09.15")
    for split, names in (("bounding_box_train", MARKET_TRAIN), ("query", MARKET_QUERY)):
        touch_files(market / split, [Path(n).stem + "_mask.png" for n in names if n.endswith(".jpg")])
    ds = get_dataset("market1501", market)
    assert len(ds.train) == 3 and len(ds.query) == 2
    assert MaskReader().find(ds.train[0].path) == Path(ds.train[0].path).with_name(
        Path(ds.train[0].path).stem + "_mask.png")
    folder = tmp_path / "cuhk03-np" / "detected"
    touch_files(folder / "bounding_box_train", ["0001_c1_1.png", "0001_c1_1_mask.png", "0009_c2_3.png",
                                                "0009_c2_3_mask.png"])
    touch_files(folder / "query", ["0002_c1_1.png", "0002_c1_1_mask.png"])
    touch_files(folder / "bounding_box_test", ["0002_c2_4.png", "0002_c2_4_mask.png"])
    ds = get_dataset("cuhk03", tmp_path / "cuhk03-np")
    assert triples(ds.train) == [("0001_c1_1.png", 0, 0), ("0009_c2_3.png", 1, 1)]
    assert [Path(s.path).name for s in ds.query + ds.gallery] == ["0002_c1_1.png", "0002_c2_4.png"]


def test_masks_in_a_parallel_folder_mirror_the_image_paths_under_the_dataset_folder(touch_files, tmp_path):
    """SA-GAN's --source-masks DIR: an image's mask is DIR/<its path under the dataset folder>.png, so MSMT17's
    identity folders are kept (train/0000/...), and flat layouts keep DIR/<split>/<stem>.png."""
    from reidfast.data import MaskReader
    msmt = get_dataset("msmt17", make_msmt(touch_files, tmp_path / "data", "V1"))
    masks = tmp_path / "msmt-masks"
    for split in (msmt.train, msmt.query):
        for sample in split:
            touch_files(masks / Path(sample.path).parent.relative_to(msmt.root), [Path(sample.path).stem + ".png"])
    reader = MaskReader.for_dataset(msmt, masks)
    assert reader.find(msmt.train[1].path) == masks / "train" / "0001" / "0001_000_15_0303morning_0100_0.png"
    assert all(reader.find(s.path) is not None for s in msmt.train + msmt.query)
    market = get_dataset("market1501", make_market(touch_files, tmp_path / "Market-1501-v15.09.15"))
    touch_files(tmp_path / "market-masks" / "query", [Path(n).stem + ".png" for n in MARKET_QUERY])
    assert MaskReader.for_dataset(market, tmp_path / "market-masks").find(market.query[0].path) == \
        tmp_path / "market-masks" / "query" / "0001_c1s1_001051_00.png"


def test_wrong_data_root_errors_say_what_to_do(touch_files, tmp_path):
    """The usual mistakes with a data root: an archive not extracted, a split folder given instead of the dataset
    folder, a split folder missing. Each error names the flag and the fix."""
    downloads = tmp_path / "downloads"
    touch_files(downloads, ["Market-1501-v15.09.15.zip"])
    with pytest.raises(DatasetNotFoundError, match=r"Market-1501-v15\.09\.15\.zip is an archive that has not been "
                                                   r"extracted: extract it and give as the data root \(--data-root"):
        get_dataset("market1501", downloads)
    market = make_market(touch_files, tmp_path / "Market-1501-v15.09.15")
    inside = f"is inside the dataset folder: give as the data root (--data-root, or SA-GAN's --source-root / " \
             f"--target-root) {market} (the folder holding"
    with pytest.raises(DatasetNotFoundError, match=re.escape(inside)):
        get_dataset("market1501", market / "bounding_box_train")
    single = tmp_path / "prid_2011" / "single_shot"
    touch_files(single / "cam_a", ["person_0001.png"])
    touch_files(single / "cam_b", ["person_0001.png"])
    with pytest.raises(DatasetNotFoundError, match=re.escape(f"give as the data root (--data-root, or SA-GAN's "
                                                             f"--source-root / --target-root) {single} ")):
        get_dataset("prid", single / "cam_b")
    for child in (market / "query").iterdir():
        child.unlink()
    (market / "query").rmdir()
    with pytest.raises(DatasetNotFoundError, match=re.escape(f"{market} holds bounding_box_train, bounding_box_test "
                                                             f"but not query: the dataset is incomplete")):
        get_dataset("market1501", tmp_path)
    touch_files(tmp_path / "elsewhere", ["notes.txt"])
    with pytest.raises(DatasetNotFoundError, match=r"--data-root.*the dataset folder itself or a folder above it"):
        get_dataset("dukemtmc", tmp_path / "elsewhere")


def test_an_image_link_to_a_missing_file_is_an_error_naming_it(touch_files, tmp_path):
    """A dataset assembled from symbolic links: a dangling one is not silently left out of its split."""
    market = make_market(touch_files, tmp_path / "Market-1501-v15.09.15")
    (market / "bounding_box_test" / "0005_c2s1_000101_01.jpg").symlink_to(tmp_path / "gone" / "x.jpg")
    with pytest.raises(DatasetFormatError, match=r"1 image\(s\) in gallery folder .*bounding_box_test are symbolic "
                                                 r"links to files that do not exist: 0005_c2s1_000101_01\.jpg"):
        get_dataset("market1501", market)
