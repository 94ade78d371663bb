"""FD-GAN's trainer on the CPU at a tiny size: the three stages end to end, the hand-off between them, frozen parts,
exact resume across stages, the original order of operations, pose maps, generation and the verifier cascade."""
import json
import math
import shutil

import numpy as np
import pytest
import torch
from PIL import Image

from reidfast.data import normalize
from reidfast.train.__main__ import main
from reidfast.train.checkpoint import load_checkpoint

from .conftest import read_log

ITERS = 3


def fdgan_args(root, out, *extra):
    """64x32 (G's 5 stride-2 stages need multiples of 32), width-4 ResNet-50s, G/D_pd at 1/8 width, 8 pairs."""
    return ["fdgan", "--dataset", "synthetic", "--data-root", str(root), "--out", str(out), "--device", "cpu",
            "--height", "64", "--width", "32", "--backbone-width", "4", "--gan-width", "0.125", "--batch-size", "8",
            "--workers", "0", "--threads", "1", "--pretrained", "none", "--log-every", "1",
            "--eval-batch-size", "64", "--ckpt-every", "2", *extra]


@pytest.fixture(scope="module")
def all_run(tiny_root, tmp_path_factory):
    out = tmp_path_factory.mktemp("runs") / "fdgan"
    # stage III at a visible lr, so that "E's BatchNorm did not change" is not true merely because nothing did
    assert main(fdgan_args(tiny_root, out, "--stage-iters", *[str(ITERS)] * 3, "--e-lr3", "1e-3")) == 0
    return out


def records(folder):
    return {r["it"]: r for r in read_log(folder) if "loss" in r}


def networks(path):
    return load_checkpoint(path)["networks"]


def test_all_stages_write_their_folders_and_the_run_folder_holds_the_last(all_run):
    for stage in (1, 2, 3):
        folder = all_run / f"stage{stage}"
        for name in ("config.json", "log.jsonl", "checkpoint.pt", "checkpoint.prev.pt", "metrics.json"):
            assert (folder / name).is_file(), (stage, name)
        state = load_checkpoint(folder / "checkpoint.pt", "fdgan")
        assert state["iteration"] == ITERS and state["config"]["stage_running"] == stage
        expected = {"e", "v"} if stage == 1 else {"e", "v", "g", "d_id", "d_pd"}
        assert set(state["networks"]) == expected
        logged = records(folder)
        assert sorted(logged) == [1, 2, 3]
        keys = {"v", "acc"} if stage == 1 else {"d_id", "d_pd", "id", "pd", "r", "sp"} | ({"v"} if stage == 3
                                                                                           else set())
        for r in logged.values():
            assert keys <= set(r) and all(math.isfinite(r[k]) for k in keys), r
    assert not list((all_run / "stage1").glob("samples/*.png"))  # stage I generates nothing
    with Image.open(sorted((all_run / "stage2" / "samples").glob("*.png"))[-1]) as grid:
        assert grid.size[1] > 4 * 64  # rows: input, target pose, generated, ground truth
    metrics = json.loads((all_run / "metrics.json").read_text())
    assert metrics["stage"] == 3 and metrics["method"] == "fdgan" and metrics["metric"] == "euclidean"
    assert metrics["mAP"] == json.loads((all_run / "stage3" / "metrics.json").read_text())["mAP"]
    top, last = networks(all_run / "checkpoint.pt"), networks(all_run / "stage3" / "checkpoint.pt")
    assert all(torch.equal(top[n][k], last[n][k]) for n in last for k in last[n])
    assert not list(all_run.glob(".*.tmp"))


def test_stage2_starts_from_stage1_and_keeps_e_and_v_frozen(all_run):
    one, two = networks(all_run / "stage1" / "checkpoint.pt"), networks(all_run / "stage2" / "checkpoint.pt")
    for name in ("e", "v"):  # parameters and BatchNorm statistics: bit for bit stage I's final ones
        assert all(torch.equal(one[name][k], two[name][k]) for k in one[name]), name
    # D_id starts as stage I's E (its ResNet-50) and V (its head gives V's same-minus-different logit)
    method = _method(2, False)
    method.initialize_from(all_run / "stage1")
    d_id = method.d_id.state_dict()
    assert all(torch.equal(d_id[f"backbone.{k.removeprefix('backbone.')}"], v) for k, v in one["e"].items())
    torch.testing.assert_close(d_id["head.fc.weight"][0], one["v"]["fc.weight"][1] - one["v"]["fc.weight"][0])
    assert all(torch.equal(method.networks[n].state_dict()[k], one[n][k]) for n in ("e", "v") for k in one[n])


def test_stage3_trains_e_with_its_batchnorm_statistics_frozen(all_run):
    two, three = networks(all_run / "stage2" / "checkpoint.pt"), networks(all_run / "stage3" / "checkpoint.pt")
    stats = [k for k in two["e"] if "running_" in k or "num_batches" in k]
    assert stats and all(torch.equal(two["e"][k], three["e"][k]) for k in stats)  # E's statistics, as stage II's
    assert not torch.equal(two["e"]["backbone.conv1.weight"], three["e"]["backbone.conv1.weight"])  # E trains
    assert not torch.equal(two["e"]["backbone.bn1.weight"], three["e"]["backbone.bn1.weight"])  # its affine too
    # V's and D_id's statistics stay too (the published set_bn_fix); D_id's are stage I's E's and V's throughout
    one = networks(all_run / "stage1" / "checkpoint.pt")
    for name, before in (("v", two["v"]), ("d_id", two["d_id"])):
        keys = [k for k in before if "running_" in k]
        assert keys and all(torch.equal(before[k], three[name][k]) for k in keys), name
    assert all(torch.equal(two["d_id"][k], one["e"][k]) for k in one["e"] if "running_" in k)
    # G started from stage II's G (Adam at 1e-6 for 3 steps moves it by about 3e-6 per weight)
    g2, g3 = two["g"], three["g"]
    assert max((g2[k] - g3[k]).abs().max().item() for k in g2 if k.endswith("weight")) < 1e-4


def test_resume_continues_stage2_then_runs_stage3_exactly(all_run, tmp_path):
    copy = tmp_path / "copy"
    shutil.copytree(all_run / "stage1", copy / "stage1")
    (copy / "stage2").mkdir(parents=True)
    shutil.copy(all_run / "stage2" / "checkpoint.prev.pt", copy / "stage2" / "checkpoint.pt")  # iteration 2
    assert main(["fdgan", "--out", str(copy), "--resume"]) == 0
    assert sorted(records(copy / "stage2")) == [3]
    strip = lambda r: {k: v for k, v in r.items() if k != "images_per_s"}  # noqa: E731
    assert strip(records(copy / "stage2")[3]) == strip(records(all_run / "stage2")[3])
    full, again = records(all_run / "stage3"), records(copy / "stage3")
    assert [strip(again[i]) for i in (1, 2, 3)] == [strip(full[i]) for i in (1, 2, 3)]
    a, b = networks(all_run / "checkpoint.pt"), networks(copy / "checkpoint.pt")
    assert all(torch.equal(a[n][k], b[n][k]) for n in a for k in a[n])
    # resuming a finished run re-trains nothing, and says so; with a longer length, its last stage trains on
    log_size = (copy / "stage3" / "log.jsonl").stat().st_size
    assert main(["fdgan", "--out", str(copy), "--resume"]) == 0
    assert (copy / "stage3" / "log.jsonl").stat().st_size == log_size
    assert main(["fdgan", "--out", str(copy), "--resume", "--iters", str(ITERS + 1)]) == 0
    assert sorted(records(copy / "stage3")) == [1, 2, 3, ITERS + 1]
    assert load_checkpoint(copy / "checkpoint.pt")["iteration"] == ITERS + 1


def test_a_run_saved_before_the_augmentation_options_resumes_with_the_published_augmentation(all_run, tmp_path):
    # checkpoints written before --erasing and --crop-area existed trained with the published values; the preset's
    # values (a flip only) must not replace them when such a run is resumed
    copy = tmp_path / "copy"
    shutil.copytree(all_run / "stage1", copy / "stage1")
    (copy / "stage2").mkdir(parents=True)
    state = torch.load(all_run / "stage2" / "checkpoint.prev.pt", weights_only=True)
    for key in ("erasing", "crop_area"):
        del state["config"][key]
    state["config"]["preset"] = "cpu-quick"  # a run of that preset: every option saved but the two
    torch.save(state, copy / "stage2" / "checkpoint.pt")
    assert main(["fdgan", "--out", str(copy), "--resume", "--stage-iters", "3", "3", "1"]) == 0
    for stage in (2, 3):
        config = load_checkpoint(copy / f"stage{stage}" / "checkpoint.pt")["config"]
        assert (config["erasing"], config["crop_area"]) == (0.75, 0.64), stage


def test_stage_lengths_given_with_resume_apply_to_the_running_stage_and_the_next(all_run, tmp_path, capsys):
    copy = tmp_path / "copy"
    shutil.copytree(all_run / "stage1", copy / "stage1")
    (copy / "stage2").mkdir(parents=True)
    shutil.copy(all_run / "stage2" / "checkpoint.prev.pt", copy / "stage2" / "checkpoint.pt")  # iteration 2
    assert main(["fdgan", "--out", str(copy), "--resume", "--stage-iters", "3", "4", "2"]) == 0
    assert load_checkpoint(copy / "stage2" / "checkpoint.pt")["iteration"] == 4
    assert load_checkpoint(copy / "stage3" / "checkpoint.pt")["iteration"] == 2
    assert "this run finished" not in capsys.readouterr().err


def test_a_stage_is_not_trained_over_unless_asked(all_run, tiny_root, tmp_path, capsys):
    run = tmp_path / "staged"
    shutil.copytree(all_run / "stage1", run / "stage1")
    # the next stage in the same folder is not in the way of anything
    assert main(fdgan_args(tiny_root, run, "--stage", "2", "--iters", "1")) == 0
    before = (run / "stage2" / "checkpoint.pt").read_bytes()
    assert main(fdgan_args(tiny_root, run, "--stage", "2", "--iters", "1")) == 2
    assert f"already holds a fdgan run ({run / 'stage2' / 'checkpoint.pt'})" in capsys.readouterr().err
    assert (run / "stage2" / "checkpoint.pt").read_bytes() == before
    assert main(fdgan_args(tiny_root, run, "--stage", "2", "--iters", "1", "--overwrite")) == 0


def test_the_test_images_are_opened_once_for_all_stages(tiny_root, tmp_path, monkeypatch):
    # every stage evaluates on the same query and gallery: their headers are read before stage I only
    from reidfast.train import loop
    data = tmp_path / "data"
    shutil.copytree(tiny_root, data)  # files that no earlier run of this process has opened
    opened, check = [], loop.check_image_headers

    def counted(samples, split):
        opened.append(split)
        return check(samples, split)

    monkeypatch.setattr(loop, "check_image_headers", counted)
    assert main(fdgan_args(data, tmp_path / "run", "--stage-iters", "1", "1", "1")) == 0
    assert opened == ["query", "gallery"]
    assert all((tmp_path / "run" / f"stage{stage}" / "metrics.json").is_file() for stage in (1, 2, 3))


def test_a_single_stage_needs_the_previous_one(tiny_root, tmp_path, capsys):
    assert main(fdgan_args(tiny_root, tmp_path / "lonely", "--stage", "2", "--iters", "1")) == 2
    assert "--init" in capsys.readouterr().err


def test_a_missing_keypoints_file_is_an_error_before_stage_one(tiny_root, tmp_path, capsys):
    assert main(fdgan_args(tiny_root, tmp_path / "r", "--keypoints", str(tmp_path / "none.csv"))) == 2
    assert f"--keypoints {tmp_path / 'none.csv'}: no such file" in capsys.readouterr().err
    # a folder (of FD-GAN's per-image pose files, say) is not the CSV the trainer reads
    assert main(fdgan_args(tiny_root, tmp_path / "r", "--keypoints", str(tmp_path))) == 2
    assert f"--keypoints {tmp_path}: is a folder; expected the 18-point OpenPose CSV file" in capsys.readouterr().err
    assert not (tmp_path / "r").exists()
    assert not (tmp_path / "r").exists()


def test_single_stage_from_init(all_run, tiny_root, tmp_path):
    out = tmp_path / "s3"
    assert main(fdgan_args(tiny_root, out, "--stage", "3", "--iters", "1", "--init", str(all_run / "stage2"))) == 0
    assert load_checkpoint(out / "stage3" / "checkpoint.pt")["iteration"] == 1
    assert not (out / "stage1").exists() and (out / "checkpoint.pt").is_file()


def test_a_wrong_init_is_refused_before_anything_is_written(all_run, tiny_root, tmp_path, capsys):
    out = tmp_path / "never"
    # stage III from a stage I checkpoint: the stage before it is II
    assert main(fdgan_args(tiny_root, out, "--stage", "3", "--iters", "1", "--init", str(all_run / "stage1"))) == 2
    assert ("--init: fdgan stage 3 starts from a stage 2 checkpoint; "
            f"{all_run / 'stage1' / 'checkpoint.pt'} holds stage 1") in capsys.readouterr().err
    assert not out.exists()


@pytest.mark.parametrize("stage", ["1", "all"])
def test_init_without_a_single_later_stage_is_named_as_ignored(all_run, tiny_root, tmp_path, capsys, stage):
    out = tmp_path / "file"
    out.write_text("")  # stops the run before it trains: the message is what is checked
    assert main(fdgan_args(tiny_root, out, "--stage", stage, "--init", str(all_run / "stage2"))) == 2
    assert f"warning: fdgan: --init starts --stage 2 or 3 on its own; --stage {stage} " in capsys.readouterr().err


def test_stage1_identification_loss_option(tiny_root, tmp_path):
    # the cpu-quick preset's addition to stage I: a ClassBlock head, checkpointed, not needed at test time
    out = tmp_path / "s1"
    assert main(fdgan_args(tiny_root, out, "--stage", "1", "--iters", "2", "--stage1-id-w", "1")) == 0
    logged = records(out / "stage1")
    assert all(r["cls"] > 0 and r["loss"] == pytest.approx(r["v"] + r["cls"], rel=1e-5) for r in logged.values())
    assert set(networks(out / "checkpoint.pt")) == {"e", "v", "cls"}
    from reidfast.eval.__main__ import main as eval_main
    assert eval_main(["--checkpoint", str(out), "--json", str(tmp_path / "m.json")]) == 0


def _method(stage, faithful, pairs=8, **overrides):
    from types import SimpleNamespace

    from reidfast.train.fdgan import FDGAN
    from reidfast.train.config import LOOP_DEFAULTS
    from reidfast.train.loop import Run
    cfg = {**LOOP_DEFAULTS, **FDGAN.defaults, "height": 64, "width": 32, "backbone_width": 4,
           "gan_width": 0.125, "pretrained": "none", "amp": "off", "compile": False, "device": "cpu",
           "stage": str(stage), "faithful": faithful, "batch_size": pairs, "e_lr3": 1e-3, "g_lr3": 1e-3, **overrides}
    run = Run(cfg, torch.device("cpu"), 0, 1, log=lambda message: None)
    torch.manual_seed(0)
    method = FDGAN(run, SimpleNamespace(num_train_pids=4))
    method.configure(10)
    return method


def _batch(pairs=8):
    g = torch.Generator().manual_seed(1)
    anchor = torch.randint(0, 4, (pairs, 1), generator=g)
    other = torch.where(torch.arange(pairs).unsqueeze(1) % 4 == 0, anchor, (anchor + 1) % 4)
    return {"image": torch.randint(0, 256, (pairs, 4, 3, 64, 32), generator=g, dtype=torch.uint8),
            "pid": torch.cat([anchor, other, anchor, other], 1),
            "keypoints": torch.rand(pairs, 4, 18, 2, generator=g) * torch.tensor([31.0, 63.0])}


def test_erasing_and_crop_area_set_the_augmentation():
    from reidfast.data import normalize
    # the defaults: the published eraser (p 0.75) in every stage and stage I's crop of 0.64-1 of the image
    published = _method(1, False)
    assert published.input_augment.erase_p == 0.75 and published.crop.area == (0.64, 1.0)
    # --erasing 0 --crop-area 1 (the cpu-quick preset's): stage I's inputs are the images or their mirrors
    light = _method(1, False, erasing=0.0, crop_area=1.0)
    assert light.crop is None
    images = _batch()["image"][:, :2].flatten(0, 1)
    out = light.input_augment(images, torch.Generator().manual_seed(0))
    plain = normalize(images.float() / 255)
    mirrored = [torch.allclose(o, p.flip(-1), atol=1e-5) for o, p in zip(out, plain)]
    as_is = [torch.allclose(o, p, atol=1e-5) for o, p in zip(out, plain)]
    assert all(m or a for m, a in zip(mirrored, as_is)) and any(mirrored) and any(as_is)


@pytest.mark.parametrize("flag, value, message", [("--erasing", "1.5", "--erasing must be a probability, in [0, 1]"),
                                                  ("--crop-area", "0", "--crop-area must be a fraction of the image")])
def test_augmentation_options_out_of_range_are_refused(tiny_root, tmp_path, capsys, flag, value, message):
    assert main(fdgan_args(tiny_root, tmp_path / "x", flag, value)) == 2
    assert message in capsys.readouterr().err


def test_the_cpu_quick_preset_augments_by_a_flip_only():
    from reidfast.train.fdgan import FDGAN
    assert FDGAN.presets["cpu-quick"]["erasing"] == 0 and FDGAN.presets["cpu-quick"]["crop_area"] == 1
    assert (FDGAN.defaults["erasing"], FDGAN.defaults["crop_area"]) == (0.75, 0.64)  # the paper settings


@pytest.mark.parametrize("stage", [1, 3])
def test_faithful_order_gives_the_same_losses_at_fp32(stage):
    # one iteration from the same state on the same batch: one batched pass per network (BatchNorm per branch)
    # and the original's call per Siamese branch / discriminator input agree up to rounding, updates included
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        losses, states = {}, {}
        for faithful in (False, True):
            method = _method(stage, faithful)
            torch.manual_seed(5)  # dropout draws
            losses[faithful] = method.train_step(_batch(), 0)
            states[faithful] = {n: m.state_dict() for n, m in method.networks.items()}
    finally:
        torch.set_num_threads(threads)
    fast, original = losses[False], losses[True]
    assert set(fast) == set(original) and ("sp" in fast) == (stage == 3)
    for key in fast:
        torch.testing.assert_close(fast[key], original[key], rtol=1e-4, atol=1e-6, msg=key)
    # the updates: SGD-trained networks (stage I's E and V, the discriminators) and the BatchNorm statistics;
    # Adam turns rounding-level gradients into full steps, so its parameters are not compared. D_id's statistics
    # differ by design (the fast order reads the real anchor once, not twice) and are never used: D_id always
    # runs in training mode.
    sgd = {"e", "v"} if stage == 1 else {"d_id", "d_pd"}
    for name in states[False]:
        for key, value in states[False][name].items():
            if name in sgd and not (name == "d_id" and ("running" in key or "num_batches" in key)) or \
                    (name != "d_id" and "running" in key):
                torch.testing.assert_close(value, states[True][name][key], rtol=1e-4, atol=1e-6, msg=f"{name}.{key}")


@pytest.mark.parametrize("stage", [2, 3])
def test_the_compiled_gan_step_is_four_graphs_made_once(compiled_graphs, stage):
    # stages II and III compile four whole-step functions (the generator pass, D_id's loss, D_pd's loss, the G
    # step's losses), each one graph (a graph break would add another), made in the first step and reused after
    method = _method(stage, False, pairs=2, compile=True)
    method.train_step(_batch(2), 0)
    assert compiled_graphs == ["_generator_pass", "_did_loss", "_dpd_loss", "_generator_losses"]
    method.train_step(_batch(2), 1)
    assert len(compiled_graphs) == 4, f"the second step compiled {compiled_graphs[4:]}"


def test_stage1_compiles_e_and_v_once_each(compiled_graphs):
    method = _method(1, False, pairs=2, compile=True)
    for it in range(2):
        method.train_step(_batch(2), it)
    assert sorted(compiled_graphs) == ["ImageEncoder", "Verifier"]


def test_optimizers_follow_the_published_configuration():
    # stage I's SGD (E, V) decays weights by 5e-4, the discriminators' SGD by 1e-4 in stages II and III
    one = _method(1, False).optimizers
    assert {k: o.param_groups[0]["weight_decay"] for k, o in one.items()} == {"e": 5e-4, "v": 5e-4}
    assert one["v"].param_groups[0]["lr"] == 10 * one["e"].param_groups[0]["lr"] == 0.1
    for stage, lrs in ((2, {"g": 1e-3, "d_id": 1e-4, "d_pd": 1e-2}),
                       (3, {"e": 1e-3, "g": 1e-3, "v": 1e-5, "d_id": 1e-4, "d_pd": 1e-4})):
        optimizers = _method(stage, False).optimizers  # (_method sets e_lr3 and g_lr3 to 1e-3)
        assert {k: o.param_groups[0]["lr"] for k, o in optimizers.items()} == lrs
        assert optimizers["d_id"].param_groups[0]["weight_decay"] == optimizers["d_pd"].param_groups[0][
            "weight_decay"] == 1e-4
        assert all(o.param_groups[0]["betas"] == (0.5, 0.999) for k, o in optimizers.items() if k in ("e", "g", "v"))


def test_loss_weight_configurations():
    paper, published = _method(2, False).weights, _method(2, False, loss_weights="published").weights
    assert paper == {"v": 1.0, "id": 0.1, "pd": 0.1, "r": 10.0, "sp": 1.0}
    # the published commands (L_r 100, L_sp 10, L_v 10) with its adversarial terms at weight 1: the paper's x 10
    assert published == {"v": 10.0, "id": 1.0, "pd": 1.0, "r": 100.0, "sp": 10.0}
    assert _method(2, False, loss_weights="published", r_w=5.0, id_w=0.5).weights == {**published, "r": 5.0,
                                                                                       "id": 0.5}
    # stage I is L_v alone, at weight 1 whichever preset weighs stages II and III, unless --v-w is given
    assert _method(1, False, loss_weights="published").weights["v"] == 1.0
    assert _method(1, False, v_w=2.0).weights["v"] == 2.0


def test_each_image_of_a_pair_has_a_target_of_its_identity():
    from reidfast.data import VerificationPairSampler
    from reidfast.train.fdgan import TargetPoseSampler
    pids = np.repeat(np.arange(6), 4)
    quads = list(TargetPoseSampler(pids.tolist(), num_negatives=3, seed=3))
    # the pairs are VerificationPairSampler's, unchanged by the targets' draws
    assert [q[:2] for q in quads] == list(VerificationPairSampler(pids.tolist(), num_negatives=3, seed=3))
    drawn = set()
    for anchor, other, t_a, t_o in quads:
        assert pids[t_a] == pids[anchor] and t_a != anchor
        if pids[other] == pids[anchor]:  # the positive pair: the other image takes the anchor's target
            assert t_o == t_a
        else:  # a negative pair: a target of the other's identity, not the other image itself
            assert pids[t_o] == pids[other] and t_o != other
        drawn |= {(anchor, t_a), (other, t_o)}
    assert len({image for image, _ in drawn}) < len(drawn)  # drawn per pair, not fixed per image
    # the anchor's target is not always its positive partner (whose own target would then be itself)
    positives = [(o, t) for a, o, t, _ in quads if pids[o] == pids[a]]
    assert any(o != t for o, t in positives)


def test_the_gan_step_asks_each_branch_for_its_own_target():
    method = _method(2, False)
    batch = _batch()
    same = batch["pid"][:, 0] == batch["pid"][:, 1]
    assert same.any() and not same.all()
    sigma = method._draws(8, torch.device("cpu"))["sigma"]
    pose = method.target_poses(batch["keypoints"], same, sigma)
    p_a, p_o = pose.chunk(2)
    torch.testing.assert_close(p_a, method.pose_maps(batch["keypoints"][:, 2], sigma[:8]))
    torch.testing.assert_close(p_o[same], p_a[same])  # positive pairs: the anchor's pose map
    torch.testing.assert_close(p_o[~same], method.pose_maps(batch["keypoints"][~same, 3], sigma[8:][~same]))
    # L_r compares every generated image with its own target: G asked for t_o on negative pairs is judged by t_o
    seen = {}
    real, real_draws = method.generator_losses, method._draws

    def draws(*args):
        seen["draws"] = real_draws(*args)
        return seen["draws"]

    method._draws = draws

    def spy(x, fake, t_gen, pose, same, logits):
        out = real(x, fake, t_gen, pose, same, logits)
        seen.update(fake=fake.detach(), t_gen=t_gen, r=out["r"].detach())
        return out

    method.generator_losses = spy
    method.train_step(batch, 0)
    from reidfast.data import normalize
    from reidfast.models.fdgan import to_generator_range
    t_a, t_o = normalize(batch["image"][:, 2]), normalize(batch["image"][:, 3])
    flip_a, flip_o = seen["draws"]["target_flip"].chunk(2)
    same4 = same.view(-1, 1, 1, 1)
    flip = torch.cat([flip_a, torch.where(same, flip_a, flip_o)]).view(-1, 1, 1, 1)
    assert flip.any() and not flip.all()
    targets = torch.cat([t_a, torch.where(same4, t_a, t_o)])  # positives: the anchor's target, and its flip
    torch.testing.assert_close(seen["t_gen"], to_generator_range(torch.where(flip, targets.flip(-1), targets)))
    torch.testing.assert_close(seen["r"], (seen["fake"] - seen["t_gen"]).abs().mean())


def test_stages_two_and_three_augment_inputs_and_flip_targets_with_their_pose_maps():
    method = _method(2, False)
    batch = _batch()
    same = batch["pid"][:, 0] == batch["pid"][:, 1]
    sigma = method._draws(8, torch.device("cpu"))["sigma"]
    flip = torch.arange(16) % 3 == 0
    plain = method.target_poses(batch["keypoints"], same, sigma)
    flipped = method.target_poses(batch["keypoints"], same, sigma, flip)
    shared = torch.cat([flip[:8], torch.where(same, flip[:8], flip[8:])])  # positives: the anchor's flip
    # a flipped target's map is the mirror image of its map, channel by channel (no left/right swap)
    torch.testing.assert_close(flipped[shared], plain[shared].flip(-1), atol=1e-5, rtol=0)
    torch.testing.assert_close(flipped[~shared], plain[~shared])
    # the inputs: the published eraser's settings (p 0.75, one colour per image, mostly tall boxes) and a flip
    augment = method.input_augment
    assert (augment.erase_p, augment.erase_area, augment.erase_value, augment.erase_ratio_scale, augment.flip_p,
            augment.pad) == (0.75, (0.02, 0.2), "colour", "linear", 0.5, 0)
    images = torch.full((400, 3, 64, 32), 128, dtype=torch.uint8)
    out = augment(images, torch.Generator().manual_seed(0))
    erased = (out != normalize(images[:1])).any(1)  # (B, H, W) pixels changed
    rate = erased.flatten(1).any(1).float().mean().item()
    assert 0.68 < rate < 0.82
    colours = [out[i][:, erased[i]] for i in range(40) if erased[i].any()]
    assert all((c == c[:, :1]).all() for c in colours)  # one colour per box
    assert len({tuple(c[:, 0].tolist()) for c in colours}) == len(colours)  # drawn per image


def test_pose_maps_draw_bandwidths_from_the_scaled_set():
    method = _method(2, False)
    sigmas = {round(s, 6) for s in method.sigmas.tolist()}
    assert sigmas == {1.0, 1.25, 1.5}  # 4, 5, 6 pixels at height 256, at height 64
    draws = method._draws(200, torch.device("cpu"))
    assert {round(s, 6) for s in draws["sigma"].tolist()} == sigmas
    assert ((draws["id_real"] >= 0.7) & (draws["id_real"] <= 1)).all() and (draws["pd_fake"] <= 0.3).all()
    # one smoothed label per discriminator call (the published GAN loss), for both branches' 400 inputs
    for name in ("id_real", "id_fake", "pd_real", "pd_fake"):
        assert draws[name].shape == (400,) and (draws[name] == draws[name][0]).all(), name
    assert len({draws[name][0].item() for name in ("id_real", "id_fake", "pd_real", "pd_fake")}) == 4
    kp = torch.tensor([[[10.0, 20.0]] + [[-1.0, -1.0]] * 17])
    maps = method.pose_maps(kp, torch.tensor([1.25]))
    assert maps.shape == (1, 18, 64, 32)
    assert maps[0, 0, 20, 10] == 1 and maps[0, 0].argmax() == 20 * 32 + 10  # peak 1 at (x 10, y 20)
    assert maps[0, 1:].abs().sum() == 0  # missing keypoints: empty channels
    wider = method.pose_maps(kp, torch.tensor([1.5]))
    assert wider[0, 0, 20, 13] > maps[0, 0, 20, 13]


def test_bandwidths_must_be_positive():
    # Checked once here, so the step's pose maps skip the check (on a GPU, a wait per step).
    for bad in ([4.0, 0.0], [-5.0], []):
        with pytest.raises(ValueError, match="--pose-sigmas must be positive"):
            _method(2, False, pose_sigmas=bad)


def test_verifier_rescoring_reorders_the_top_k_only():
    method = _method(1, False)
    torch.nn.init.normal_(method.v.fc.weight, std=0.05)  # no saturated (tied) probabilities
    torch.manual_seed(3)
    qf, gf = torch.randn(3, 128), torch.randn(20, 128)
    k = 5
    dist = method.verifier_distances(qf, gf, topk=k)
    euclid = torch.cdist(qf, gf).square()
    method.v.eval()
    for q in range(3):
        order = dist[q].argsort(stable=True)
        nearest = euclid[q].argsort()[:k]
        with torch.no_grad():
            p = method.v.same_probability(qf[q:q + 1].expand(k, -1), gf[nearest])
        assert order[:k].tolist() == nearest[p.argsort(descending=True)].tolist()
        assert order[k:].tolist() == euclid[q].argsort()[k:].tolist()


def test_eval_with_verifier_cascade(all_run, tmp_path, capsys):
    from reidfast.eval.__main__ import main as eval_main
    plain, cascade = tmp_path / "plain.json", tmp_path / "cascade.json"
    assert eval_main(["--checkpoint", str(all_run), "--json", str(plain)]) == 0
    trained = json.loads((all_run / "metrics.json").read_text())
    assert json.loads(plain.read_text())["mAP"] == pytest.approx(trained["mAP"], abs=1e-6)
    # re-scoring only each query's nearest item leaves every ranking as it was
    assert eval_main(["--checkpoint", str(all_run), "--verifier-topk", "1", "--json", str(cascade)]) == 0
    assert json.loads(cascade.read_text())["mAP"] == pytest.approx(json.loads(plain.read_text())["mAP"], abs=1e-6)
    assert eval_main(["--checkpoint", str(all_run), "--verifier-topk", "100", "--json", str(cascade)]) == 0
    assert "re-scored by the verifier" in capsys.readouterr().out
    # what was ranked: V's re-scoring of the Euclidean top 100, not a metric of the features
    assert json.loads(cascade.read_text())["metric"] == "euclidean, top 100 re-scored by the verifier"
    assert eval_main(["--checkpoint", str(all_run), "--verifier-topk", "5", "--metric", "cosine"]) == 2
    assert "--metric cosine: --verifier-topk re-scores the nearest by Euclidean distance" in capsys.readouterr().err
    assert eval_main(["--checkpoint", str(all_run), "--verifier-topk", "-1"]) == 2
    assert "--verifier-topk: must be >= 0" in capsys.readouterr().err


def test_generate_writes_input_pose_and_generated_images(all_run, tiny_root, tmp_path, capsys):
    from reidfast.generate.__main__ import main as generate_main
    image = sorted((tiny_root / "query").glob("*.jpg"))[0]
    target = sorted((tiny_root / "bounding_box_train").glob("*.jpg"))[0]
    out = tmp_path / "gen"
    assert generate_main(["fdgan", "--checkpoint", str(all_run), "--image", str(image), "--pose", target.name,
                          "--out", str(out), "--device", "cpu"]) == 0
    written = capsys.readouterr().out.split()
    assert sorted(p.split("/")[-1] for p in written) == ["generated_0_0.png", "input_0.png", "pose_0.png"]
    with Image.open(out / "generated_0_0.png") as img:
        assert img.size == (32, 64)
    with Image.open(out / "pose_0.png") as img:
        assert np.asarray(img).max() == 255 and np.asarray(img).mean() < 64  # white keypoints on black
    # a keypoints CSV: one generated image per row
    csv = tmp_path / "poses.csv"
    lines = (tiny_root / "annotations.csv").read_text().splitlines()[:3]
    csv.write_text("\n".join(lines) + "\n")
    assert generate_main(["fdgan", "--checkpoint", str(all_run), "--image", str(image), "--pose", str(csv),
                          "--out", str(tmp_path / "gen2"), "--device", "cpu"]) == 0
    assert len(list((tmp_path / "gen2").glob("generated_0_*.png"))) == 2
    # stage I has no generator: a clear error
    assert generate_main(["fdgan", "--checkpoint", str(all_run / "stage1"), "--image", str(image), "--pose",
                          target.name, "--out", str(tmp_path / "gen3"), "--device", "cpu"]) == 2
    assert "stage I" in capsys.readouterr().err


def test_generate_names_the_bad_pose_argument_in_one_error_line(all_run, tiny_root, tmp_path, capsys):
    from reidfast.generate.__main__ import main as generate_main
    image = sorted((tiny_root / "query").glob("*.jpg"))[0]
    target = sorted((tiny_root / "bounding_box_train").glob("*.jpg"))[0]
    csv = tmp_path / "poses.csv"
    csv.write_text("\n".join((tiny_root / "annotations.csv").read_text().splitlines()[:2]) + "\n")
    out = tmp_path / "gen"
    base = ["fdgan", "--checkpoint", str(all_run), "--image", str(image), "--out", str(out), "--device", "cpu"]
    missing_csv, missing_txt = tmp_path / "nope.csv", tmp_path / "nope.txt"
    cases = [
        (["--pose", str(csv), "--pose-size", "0", "32"], "--pose-size: H and W must be positive integers, got 0 32"),
        (["--pose", str(csv), "--pose-size", "-64", "32"],
         "--pose-size: H and W must be positive integers, got -64 32"),
        # --keypoints given but missing: said so, whether --pose is a dataset image or a keypoints file
        (["--pose", target.name, "--keypoints", str(missing_csv)], f"--keypoints {missing_csv}: no such file"),
        (["--pose", str(csv), "--keypoints", str(missing_csv)], f"--keypoints {missing_csv}: no such file"),
        (["--pose", target.name, "--keypoints", str(tmp_path)], f"--keypoints {tmp_path}: not a file"),
        (["--pose", str(missing_txt)], f"--pose {missing_txt}: no such file"),
        (["--pose", str(missing_csv)], f"--pose {missing_csv}: no such file"),
        (["--pose", "nope.jpg"], "--pose nope.jpg: no such file, and synthetic"),
    ]
    for extra, message in cases:
        assert generate_main(base + extra) == 2, extra
        err = capsys.readouterr().err
        assert err.splitlines()[-1].startswith(f"error: {message}") and "Traceback" not in err, (extra, err)
    assert not out.exists()


def test_generate_takes_a_dataset_image_by_path_and_a_pose_file_at_its_size(all_run, tiny_root, tmp_path, capsys):
    from reidfast.generate.__main__ import main as generate_main
    image = sorted((tiny_root / "query").glob("*.jpg"))[0]
    target = sorted((tiny_root / "bounding_box_train").glob("*.jpg"))[0]
    base = ["fdgan", "--checkpoint", str(all_run), "--image", str(image), "--device", "cpu"]
    assert generate_main(base + ["--pose", str(target), "--keypoints", str(tiny_root / "annotations.csv"),
                                 "--out", str(tmp_path / "by_path")]) == 0
    # the same pose as an FD-GAN .txt file ("y x" per line) in pixels of an image twice the dataset's size
    from reidfast.data import read_keypoints_csv
    keypoints = read_keypoints_csv(tiny_root / "annotations.csv")[target.name]
    txt = tmp_path / "pose.txt"
    txt.write_text("".join(f"{2 * y:g} {2 * x:g}\n" if x >= 0 else "-1 -1\n" for x, y in keypoints))
    with Image.open(target) as img:
        size = [str(2 * img.height), str(2 * img.width)]
    assert generate_main(base + ["--pose", str(txt), "--pose-size", *size, "--out", str(tmp_path / "txt")]) == 0
    capsys.readouterr()
    for name in ("pose_0.png", "generated_0_0.png"):
        with Image.open(tmp_path / "by_path" / name) as a, Image.open(tmp_path / "txt" / name) as b:
            assert np.array_equal(np.asarray(a), np.asarray(b)), name


def test_evaluation_takes_the_image_alone_as_the_published_evaluation(tmp_path):
    # FD-GAN's published evaluation embeds the image alone; DG-Net's test feature combines the image and its
    # mirror itself (a second, outer mirror would double the work for the same feature); the rest flip-average
    from PIL import Image

    from reidfast.data import Sample
    from reidfast.eval.features import extract_features
    from reidfast.train.dgnet import DGNet
    from reidfast.train.fdgan import FDGAN
    from reidfast.train.loop import Method
    assert (Method.eval_flip, FDGAN.eval_flip, DGNet.eval_flip) == (True, False, False)
    samples = []
    for i in range(3):
        path = tmp_path / f"{i:04d}_c1s1_000001_00.png"
        Image.fromarray(np.random.default_rng(i).integers(0, 256, (8, 4, 3), dtype=np.uint8)).save(path)
        samples.append(Sample(str(path), i, 0))
    calls = []

    def left_half(images):  # a feature that tells an image from its mirror
        calls.append(images.shape[0])
        return images[..., :2].mean((2, 3))

    common = dict(size=(8, 4), device=torch.device("cpu"), workers=0, l2_normalize=False)
    alone = extract_features(left_half, samples, flip=False, **common)
    assert calls == [3]
    both = extract_features(left_half, samples, flip=True, **common)
    images = normalize(torch.stack([torch.from_numpy(np.array(Image.open(s.path))).permute(2, 0, 1) for s in samples]))
    torch.testing.assert_close(alone, images[..., :2].mean((2, 3)))
    torch.testing.assert_close(both, 0.5 * (images[..., :2].mean((2, 3)) + images.flip(3)[..., :2].mean((2, 3))))
