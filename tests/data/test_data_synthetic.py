import hashlib
import json
import re
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from reidfast.data import MaskReader, get_dataset, read_keypoints_csv
from reidfast.data.synthetic import generate, generate_atomically, main


MARKET_NAME = re.compile(r"^(-1|\d{4})_c(\d)s(\d)_(\d{6})_(\d{2})\.jpg$")
SPLITS = ("bounding_box_train", "bounding_box_test", "query")


def tree_digest(root: Path) -> str:
    digest = hashlib.sha256()
    for path in sorted(p for p in root.rglob("*") if p.is_file()):
        digest.update(str(path.relative_to(root)).encode() + path.read_bytes())
    return digest.hexdigest()


def test_market_layout_and_naming(tiny_params, synthetic_root):
    assert {p.name for p in synthetic_root.iterdir()} == {*SPLITS, "masks", "annotations.csv", "synthetic.json"}
    names = {split: sorted(p.name for p in (synthetic_root / split).iterdir()) for split in SPLITS}
    for split, files in names.items():
        assert files, split
        for name in files:
            m = MARKET_NAME.match(name)
            assert m, name
            assert 1 <= int(m.group(2)) <= tiny_params["cameras"]
    all_names = [n for files in names.values() for n in files]
    assert len(all_names) == len(set(all_names))  # unique across splits (one keypoints CSV serves all)
    train_ids = {n.split("_")[0] for n in names["bounding_box_train"]}
    query_ids = {n.split("_")[0] for n in names["query"]}
    assert len(train_ids) == tiny_params["ids"] // 2 and len(query_ids) == tiny_params["ids"] - tiny_params["ids"] // 2
    assert not train_ids & query_ids
    gallery_labels = {n.split("_")[0] for n in names["bounding_box_test"]}
    assert {"-1", "0000"} <= gallery_labels  # junk and distractors exercise the protocol
    with Image.open(synthetic_root / "query" / names["query"][0]) as img:
        assert img.size == (tiny_params["width"], tiny_params["height"]) and img.mode == "RGB"
    assert json.loads((synthetic_root / "synthetic.json").read_text())["images"] == len(all_names)


def test_reader_protocol_every_query_has_a_cross_camera_match(tiny_params, synthetic_root):
    ds = get_dataset("synthetic", synthetic_root)
    assert ds.num_train_pids == tiny_params["ids"] // 2 and sorted({s.pid for s in ds.train}) == list(range(4))
    assert ds.keypoints_csv.is_file() and ds.masks_dir.is_dir()
    for q in ds.query:
        assert any(g.pid == q.pid and g.camid != q.camid for g in ds.gallery)
    # one query per identity and camera, as in Market-1501
    assert len({(q.pid, q.camid) for q in ds.query}) == len(ds.query)


def test_keypoints_csv_covers_every_image_and_lies_on_the_person(tiny_params, synthetic_root):
    poses = read_keypoints_csv(synthetic_root / "annotations.csv")
    images = [p for split in SPLITS for p in (synthetic_root / split).iterdir()]
    assert set(poses) == {p.name for p in images}
    reader = MaskReader(synthetic_root / "masks")
    on_person = total = 0
    for path in images:
        if path.name.startswith("-1"):
            continue
        kp = poses[path.name]
        visible = (kp >= 0).all(1)
        assert visible.sum() >= 8, path.name  # a person seen in full shows most joints
        x, y = kp[visible].T.astype(int)
        assert (x < tiny_params["width"]).all() and (y < tiny_params["height"]).all()
        mask = reader.read(path)
        on_person += mask[y, x].sum()
        total += visible.sum()
    assert on_person / total > 0.9


def test_masks_are_binary_pngs_of_the_image_size(tiny_params, synthetic_root):
    reader = MaskReader(synthetic_root / "masks")
    for path in sorted((synthetic_root / "query").iterdir()):
        raw = np.asarray(Image.open(synthetic_root / "masks" / "query" / (path.stem + ".png")))
        assert raw.shape == (tiny_params["height"], tiny_params["width"]) and set(np.unique(raw)) <= {0, 255}
        fraction = reader.read(path).mean()
        assert 0.05 < fraction < 0.6, path.name


def test_deterministic_for_a_seed_and_different_across_seeds_and_domains(tiny_params, tmp_path, synthetic_root):
    generate(tmp_path / "again", **tiny_params)
    assert tree_digest(tmp_path / "again") == tree_digest(synthetic_root)
    generate(tmp_path / "other", **{**tiny_params, "seed": tiny_params["seed"] + 1})
    assert tree_digest(tmp_path / "other") != tree_digest(synthetic_root)
    generate(tmp_path / "b", **{**tiny_params, "domain": "b"})
    mean = lambda root: np.mean([np.asarray(Image.open(p)).mean() for p in (root / "query").iterdir()])
    assert mean(tmp_path / "b") < mean(synthetic_root)  # domain b's cameras are darker
    # a folder names its own domain, whatever the reader's default
    assert get_dataset("synthetic", tmp_path / "b").name == "synthetic-b"
    assert get_dataset("synthetic", synthetic_root).name == "synthetic-a"


def rank1(query_features, gallery_features, query, gallery):
    """Cross-camera rank-1 (same-id same-camera gallery items and junk left out)."""
    hits = []
    for i, q in enumerate(query):
        keep = [j for j, g in enumerate(gallery) if not (g.pid == q.pid and g.camid == q.camid) and g.pid != -1]
        distances = np.abs(gallery_features[keep] - query_features[i]).sum(1)
        hits.append(gallery[keep[int(np.argmin(distances))]].pid == q.pid)
    return float(np.mean(hits))


def test_identity_is_in_the_clothes_and_the_camera_hides_it(tmp_path):
    # Raw pixels (what an untrained network mostly sees) match people poorly across cameras, while a feature that
    # looks only at the person and divides out each image's colour cast finds them: the signal is there to learn.
    root = tmp_path / "id"
    generate(root, ids=40, cameras=3, seed=5, height=64, width=32)
    ds = get_dataset("synthetic", root)
    reader = MaskReader(root / "masks")

    def raw(sample):
        return np.asarray(Image.open(sample.path), dtype=np.float32).ravel() / 255

    def person_colours(sample, bins=4):
        img = np.asarray(Image.open(sample.path), dtype=np.float32)
        img = np.clip(img / img.mean((0, 1)) * 0.45, 0, 0.999)  # grey-world: remove the camera's cast
        codes = (img * bins).astype(int) @ np.array([bins * bins, bins, 1])
        counts = np.bincount(codes[reader.read(sample.path).astype(bool)], minlength=bins**3)
        return np.sqrt(counts / max(counts.sum(), 1))

    chance = 1 / len({g.pid for g in ds.gallery if g.pid > 0})
    feats = lambda f, samples: np.stack([f(s) for s in samples])
    raw_rank1 = rank1(feats(raw, ds.query), feats(raw, ds.gallery), ds.query, ds.gallery)
    person_rank1 = rank1(feats(person_colours, ds.query), feats(person_colours, ds.gallery), ds.query, ds.gallery)
    assert person_rank1 > 4 * chance
    assert raw_rank1 < person_rank1 / 2


def test_cli_and_atomic_generation(tmp_path, capsys):
    out = tmp_path / "cli"
    assert main(["--out", str(out), "--ids", "4", "--cameras", "2", "--height", "32", "--width", "16"]) == 0
    assert "wrote" in capsys.readouterr().out
    with pytest.raises(SystemExit):
        main(["--out", str(out), "--ids", "4"])  # refuses to overwrite without --force
    # an existing destination is kept (another process finished first); no temporary folders are left behind
    before = tree_digest(out)
    assert generate_atomically(out, ids=6, cameras=2) == out and tree_digest(out) == before
    assert [p.name for p in tmp_path.iterdir()] == ["cli"]
    with pytest.raises(ValueError, match="cameras"):
        generate(tmp_path / "x", ids=4, cameras=12)
    capsys.readouterr()
    with pytest.raises(SystemExit):  # a file where the folder goes: a usage error, not a traceback
        main(["--out", str(out / "synthetic.json"), "--ids", "4"])
    assert f"--out {out / 'synthetic.json'} is a file, not a folder" in capsys.readouterr().err


def test_cli_force_replaces_only_a_synthetic_dataset(tmp_path, capsys):
    small = ["--ids", "4", "--cameras", "2", "--height", "32", "--width", "16"]
    out = tmp_path / "cli"
    assert main(["--out", str(out), *small]) == 0
    # bad parameters are an argparse error, and the existing dataset survives them
    before = tree_digest(out)
    with pytest.raises(SystemExit):
        main(["--out", str(out), "--force", "--ids", "2"])
    assert "ids must be at least 4" in capsys.readouterr().err and tree_digest(out) == before
    stale = tmp_path / ".cli.replacement"  # what an earlier --force stopped before its rename would leave
    stale.mkdir()
    (stale / "synthetic.json").write_text(json.dumps({"seed": 7}))
    assert main(["--out", str(out), "--force", "--seed", "1", *small]) == 0
    assert tree_digest(out) != before and json.loads((out / "synthetic.json").read_text())["seed"] == 1
    assert sorted(p.name for p in tmp_path.iterdir()) == ["cli"]
    # a folder that is not a synthetic dataset is never deleted
    other = tmp_path / "my-data"
    other.mkdir()
    (other / "keep.txt").write_text("precious")
    with pytest.raises(SystemExit):
        main(["--out", str(other), "--force", *small])
    assert "not a synthetic dataset" in capsys.readouterr().err and (other / "keep.txt").read_text() == "precious"


def test_default_dataset_is_generated_once_into_the_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("REIDFAST_CACHE", str(tmp_path / "cache"))
    small = dict(ids=4, cameras=2, height=32, width=16)
    ds = get_dataset(None, None, **small)
    folder = ds.root
    assert folder.parent == tmp_path / "cache" / "synthetic" and ds.num_train_pids == 2
    stamp = (folder / "synthetic.json").stat().st_mtime_ns
    assert get_dataset("synthetic", **small).root == folder
    assert (folder / "synthetic.json").stat().st_mtime_ns == stamp  # read, not regenerated
    assert [p.name for p in folder.parent.iterdir()] == [folder.name]
