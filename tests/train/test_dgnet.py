"""DG-Net's trainer on the CPU at a tiny size: a few iterations end to end, the loss ramps, exact resume, and
the teacher (given, or trained first when none is given)."""
import json
import math
import shutil

import pytest
import torch

from reidfast.train.__main__ import main
from reidfast.train.checkpoint import load_checkpoint
from reidfast.train.dgnet import ramp

from .conftest import ConvolutionsOverTheBatch, read_log, tiny_args

WARM = 3  # the ramps switch on at iteration index 3, i.e. the 4th iteration (logged as it 4)


def dgnet_args(root, out, *extra):
    """64x32 (D's third scale needs 16x8), width-4 ResNet-50, Es/G/D at 1/4 width, 2 + 2 pairs per iteration."""
    return ["dgnet", "--dataset", "synthetic", "--data-root", str(root), "--out", str(out), "--device", "cpu",
            "--height", "64", "--width", "32", "--backbone-width", "4", "--gan-width", "0.25", "--batch-size", "2",
            "--workers", "0", "--threads", "1", "--pad", "2", "--pretrained", "none", "--log-every", "1",
            "--eval-batch-size", "64", "--warm-iters", str(WARM), "--ramp-per-iter", "0.5", *extra]


@pytest.fixture(scope="module")
def teacher(tiny_root, tmp_path_factory):
    out = tmp_path_factory.mktemp("runs") / "teacher"
    assert main(tiny_args(tiny_root, out, "--iters", "2", "--last-stride", "1", "--threads", "1")) == 0
    return out


@pytest.fixture(scope="module")
def short_run(tiny_root, teacher, tmp_path_factory):
    out = tmp_path_factory.mktemp("runs") / "dgnet"
    assert main(dgnet_args(tiny_root, out, "--teacher", str(teacher), "--iters", "6", "--ckpt-every", "3")) == 0
    return out


def records(run_dir):
    return {r["it"]: r for r in read_log(run_dir) if "recon_x" in r}


def test_code_reconstruction_pulls_the_reconstruction_only():
    # the target code is fixed (the published criterion detaches it): Es is not trained toward the swap's code
    from reidfast.train.dgnet import code_l1
    code, rec = torch.randn(2, 8, 4, 2, requires_grad=True), torch.randn(2, 8, 4, 2, requires_grad=True)
    loss = code_l1(rec, code)
    assert loss.item() == pytest.approx((rec - code).abs().mean().item())
    grad_rec, grad_code = torch.autograd.grad(loss, [rec, code], allow_unused=True)
    assert grad_code is None and torch.equal(grad_rec, torch.sign(rec - code).detach() / rec.numel())


def test_ramp_schedule():
    assert [ramp(i, 3, 0.5, 2.0) for i in range(8)] == [0, 0, 0, 0.5, 1.0, 1.5, 2.0, 2.0]
    # the paper's: off until 30k, 0.0005 per iteration, full weight 1 after 2000 more
    assert ramp(29_999, 30_000, 0.0005, 1.0) == 0 and ramp(30_000, 30_000, 0.0005, 1.0) == 0.0005
    assert ramp(31_999, 30_000, 0.0005, 1.0) == 1.0


def test_a_few_iterations_write_a_complete_run(short_run):
    for name in ("config.json", "log.jsonl", "checkpoint.pt", "checkpoint.prev.pt", "metrics.json"):
        assert (short_run / name).is_file(), name
    assert list((short_run / "samples").glob("it*.png"))
    metrics = json.loads((short_run / "metrics.json").read_text())
    assert metrics["method"] == "dgnet" and metrics["iterations"] == 6 and metrics["images_per_s"] > 0
    assert 0 <= metrics["rank1"] <= metrics["rank10"] <= 1 and 0 <= metrics["mAP"] <= 1
    # both AP conventions: the paper's (market, the headline mAP) and torchreid's
    assert metrics["ap_mode"] == "market" and metrics["mAP_by_ap_mode"]["market"] == metrics["mAP"]
    assert 0 < metrics["mAP_by_ap_mode"]["torchreid"] <= 1
    logged = records(short_run)
    assert sorted(logged) == [1, 2, 3, 4, 5, 6]
    for r in logged.values():
        assert all(math.isfinite(v) for k, v in r.items() if isinstance(v, float)), r
        assert r["recon_x"] > 0 and r["d"] > 0 and r["r1"] >= 0 and r["adv"] > 0 and r["id"] > 0 and r["id_gen"] > 0
        assert r["pid"] > 0  # the same-identity partners' identity loss
    assert json.loads((short_run / "config.json").read_text())["pid_w"] == 1.0
    state = load_checkpoint(short_run / "checkpoint.pt")
    assert set(state["networks"]) == {"ea", "gen", "dis"} and set(state["optimizers"]) == {"ea", "gen", "dis"}


def test_losses_ramp_in_after_the_warm_up(short_run):
    logged = records(short_run)
    ramped = ("recon_f", "recon_s", "cycle", "prim", "fine")
    for it in (1, 2, 3):  # iteration indices 0..2: before the warm-up ends, off and not even computed
        assert all(logged[it][f"w/{k}"] == 0 and logged[it][k] == 0 for k in ramped), logged[it]
    expected = {4: (0.5, 0.5, 0.5, 0.5), 5: (1.0, 1.0, 1.0, 1.0), 6: (1.0, 1.0, 1.5, 1.5)}
    for it, (f, s, cycle, prim) in expected.items():
        r = logged[it]
        assert (r["w/recon_f"], r["w/recon_s"], r["w/cycle"], r["w/prim"]) == (f, s, cycle, prim)
        assert r["w/fine"] == pytest.approx(0.2 * prim)
        assert all(r[k] > 0 for k in ramped), r
    # the step decay: x0.1 after 60% (iteration 4 of 6) and 90% (5 of 6) of the run, for all three optimizers
    lrs = {it: r["lr/gen"] for it, r in logged.items()}
    assert lrs[3] == pytest.approx(1e-4) and lrs[4] == pytest.approx(1e-5) and lrs[5] == pytest.approx(1e-6)


def test_resume_continues_the_schedule(short_run, tmp_path):
    resumed = tmp_path / "resumed"
    resumed.mkdir()
    shutil.copy(short_run / "checkpoint.prev.pt", resumed / "checkpoint.pt")  # iteration 3: just before the ramps
    assert main(["dgnet", "--out", str(resumed), "--resume"]) == 0
    full, again = records(short_run), records(resumed)
    assert sorted(again) == [4, 5, 6]
    for it in (4, 5, 6):  # weights, lrs and losses: bit for bit (data order, dropout, erasing, optimizers, and
        # Es's coin, logged as es_tuned)
        assert {k: v for k, v in again[it].items() if k != "images_per_s"} == \
               {k: v for k, v in full[it].items() if k != "images_per_s"}
    # the coins of the resumed iterations fall both ways (this seed's draws: a run's generator state decides them)
    assert {again[it]["es_tuned"] for it in (4, 5, 6)} == {0.0, 1.0}
    a = load_checkpoint(short_run / "checkpoint.pt")["networks"]
    b = load_checkpoint(resumed / "checkpoint.pt")["networks"]
    assert all(torch.equal(a[n][k], b[n][k]) for n in a for k in a[n])


def test_without_a_teacher_the_synthetic_run_trains_one_first(tiny_root, tmp_path, capsys):
    out = tmp_path / "auto"
    assert main(dgnet_args(tiny_root, out, "--iters", "1", "--teacher-iters", "2", "--ckpt-every", "0")) == 0
    err = capsys.readouterr().err
    assert "no --teacher given: training a short baseline teacher first (2 iterations)" in err
    # 1 iteration, warm-up 3: the ramped losses never start, and the run says so
    assert f"the run ends at iteration 1, before the warm-up does (--warm-iters {WARM})" in err
    assert load_checkpoint(out / "teacher" / "checkpoint.pt", "baseline")["iteration"] == 2
    # the run's settings name the teacher it trained (a resumed run reuses it)
    assert json.loads((out / "config.json").read_text())["teacher"] == str(out / "teacher")
    assert load_checkpoint(out / "checkpoint.pt")["config"]["teacher"] == str(out / "teacher")


def test_an_interrupted_teacher_continues_and_is_not_taken_as_finished(tiny_root, tmp_path, monkeypatch, capsys):
    import os
    import signal

    from reidfast.train.baseline import Baseline
    real_step = Baseline.train_step

    def step_interrupted_during_the_2nd(self, batch, it):
        if it == 1:
            os.kill(os.getpid(), signal.SIGINT)
        return real_step(self, batch, it)

    monkeypatch.setattr(Baseline, "train_step", step_interrupted_during_the_2nd)
    out = tmp_path / "auto"
    args = dgnet_args(tiny_root, out, "--iters", "1", "--teacher-iters", "3", "--ckpt-every", "0")
    assert main(args) == 130
    err = capsys.readouterr().err
    assert "stopped after iteration 2 of the teacher" in err and "run the same command again" in err
    assert load_checkpoint(out / "teacher" / "checkpoint.pt")["iteration"] == 2
    assert not (out / "checkpoint.pt").exists()
    # the same command (with --resume too, as after an interruption of DG-Net's own training): the teacher
    # continues to its 3 iterations (not used as it was), then DG-Net trains
    monkeypatch.setattr(Baseline, "train_step", real_step)
    assert main([*args, "--resume"]) == 0
    assert "continuing a short baseline teacher first (3 iterations)" in capsys.readouterr().err
    assert load_checkpoint(out / "teacher" / "checkpoint.pt", "baseline")["iteration"] == 3
    assert load_checkpoint(out / "checkpoint.pt")["iteration"] == 1


def test_a_teacher_of_another_method_is_refused_before_the_run_folder_is_written(short_run, tiny_root, tmp_path,
                                                                                   capsys):
    out = tmp_path / "x"
    assert main(dgnet_args(tiny_root, out, "--iters", "1", "--teacher", str(short_run))) == 2
    err = capsys.readouterr().err
    assert f"--teacher {short_run / 'checkpoint.pt'}: this checkpoint was written by method 'dgnet', not " \
           f"'baseline'" in err
    assert not out.exists()


def test_teacher_iters_with_a_teacher_is_named_as_ignored(teacher, tiny_root, tmp_path, capsys):
    out = tmp_path / "file"
    out.write_text("")  # stops the run before it trains: the message is what is checked
    assert main(dgnet_args(tiny_root, out, "--iters", "1", "--teacher", str(teacher), "--teacher-iters", "5")) == 2
    assert (f"warning: dgnet: --teacher-iters sets the length of the teacher trained when no --teacher is given; "
            f"this run uses the teacher {teacher} (ignored)") in capsys.readouterr().err
    assert main(dgnet_args(tiny_root, out, "--iters", "1", "--teacher", str(teacher))) == 2
    assert "warning" not in capsys.readouterr().err


def test_real_data_without_a_teacher_is_a_clear_error(tiny_root, tmp_path, capsys):
    args = dgnet_args(tiny_root, tmp_path / "x", "--iters", "1")
    args[args.index("synthetic")] = "market1501"
    assert main(args) == 2
    assert "--teacher RUN_DIR" in capsys.readouterr().err


def _method(faithful: bool, teacher_state, num_classes=4, compile=False, **options):
    from types import SimpleNamespace

    from reidfast.models.baseline import ReidBaseline
    from reidfast.train.dgnet import DGNet
    from reidfast.train.config import LOOP_DEFAULTS
    from reidfast.train.loop import Run
    cfg = {**LOOP_DEFAULTS, **DGNet.defaults, "height": 64, "width": 32, "backbone_width": 4,
           "gan_width": 0.25, "pretrained": "none", "pad": 2, "amp": "off", "compile": compile, "warm_iters": 0,
           "ramp_per_iter": 0.5, "faithful": faithful, "device": "cpu", **options}
    run = Run(cfg, torch.device("cpu"), 0, 1, log=lambda message: None)
    torch.manual_seed(0)
    method = DGNet(run, SimpleNamespace(num_train_pids=num_classes))
    teacher = ReidBaseline(num_classes, last_stride=1, width=4, pretrained="none", log=lambda m: None)
    teacher.load_state_dict(teacher_state)
    method.teacher = teacher.eval().requires_grad_(False)
    method.configure(10)
    return method


@pytest.mark.parametrize("faithful", [False, True])
def test_the_generator_side_sees_ea_without_dropout_and_with_batch_statistics(faithful, monkeypatch):
    # the published trainer's copy of Ea for the generated images' losses: eval mode (the heads' dropout off) with
    # its BatchNorm layers in training mode (train_bn); the fast order's frozen view behaves the same
    import copy

    from reidfast.models.baseline import ReidBaseline
    import reidfast.train.dgnet as dgnet_module
    teacher_state = ReidBaseline(4, last_stride=1, width=4, pretrained="none", log=lambda m: None).state_dict()
    method = _method(faithful, teacher_state)
    copies, deepcopy = [], copy.deepcopy

    def recording_deepcopy(obj, *args):
        made = deepcopy(obj, *args)
        copies.append(made)
        return made

    monkeypatch.setattr(dgnet_module.copy, "deepcopy", recording_deepcopy)
    g = torch.Generator().manual_seed(1)
    batch = {"image": torch.randint(0, 256, (16, 2, 3, 64, 32), generator=g, dtype=torch.uint8),
             "pid": torch.tensor([[i % 4] * 2 for i in range(16)])}
    method.train_step(batch, 1)
    seen = next(c for c in copies if isinstance(c, type(method.ea))) if faithful else method.frozen_ea
    assert not seen.training
    modules = list(seen.modules())
    assert not any(m.training for m in modules if isinstance(m, torch.nn.Dropout))
    norms = [m for m in modules if isinstance(m, torch.nn.modules.batchnorm._BatchNorm)]
    assert norms and all(m.training or m.running_mean is None for m in norms)  # batch statistics
    x = torch.randn(4, 3, 64, 32)
    with torch.no_grad():
        torch.testing.assert_close(seen(x)[1], seen(x)[1])  # no dropout draw: the same logits twice


def _one_step(dtype: torch.dtype, steps: bool, **options):
    """One iteration with every loss on, from the same state on the same batch (8 pairs per loader), of the method
    made with `options`: the losses, then either the networks' states after the updates (steps) or their gradients
    and buffers without updates, and the calls of Ea's backbone (its name, batch size). Dropout off: orders and
    compiled graphs draw dropout masks in different sequences (the fast order computes the frozen view's heads along
    with every appearance code)."""
    from reidfast.models.baseline import ReidBaseline
    threads, default_dtype = torch.get_num_threads(), torch.get_default_dtype()
    torch.set_num_threads(1)
    torch.set_default_dtype(dtype)
    try:
        torch.manual_seed(0)
        teacher_state = ReidBaseline(4, last_stride=1, width=4, pretrained="none", log=lambda m: None).state_dict()
        g = torch.Generator().manual_seed(1)
        images = torch.randint(0, 256, (16, 2, 3, 64, 32), generator=g, dtype=torch.uint8)
        batch = {"image": images if dtype == torch.float32 else images.to(dtype) / 255,
                 "pid": torch.tensor([[i % 4] * 2 for i in range(16)])}
        method = _method(options.pop("faithful", False), teacher_state, **options)
        for module in (*method.ea.modules(), *method.frozen_ea.modules()):
            if isinstance(module, torch.nn.Dropout):
                module.p = 0.0
        calls = []
        method.ea.backbone.register_forward_hook(lambda m, args, out: calls.append(("ea", args[0].shape[0])))
        method.frozen_ea.backbone.register_forward_hook(
            lambda m, args, out: calls.append(("frozen", args[0].shape[0])))
        if not steps:
            method.run.step = lambda optimizer: None
        losses = method.train_step(batch, 1)
        state = {}
        for name, net in method.networks.items():
            if steps:
                state.update({f"{name}.{k}": v for k, v in net.state_dict().items()})
            else:
                state.update({f"{name}.{k}.grad": p.grad for k, p in net.named_parameters() if p.grad is not None})
                state.update({f"{name}.{k}": b for k, b in net.named_buffers()})
    finally:
        torch.set_num_threads(threads)
        torch.set_default_dtype(default_dtype)
    return losses, state, calls


def _both_orders(dtype: torch.dtype, steps: bool, encoder_again: float):
    """_one_step in the fast order and in the original's (--faithful), with Es's second pass on the detached swaps
    (encoder_again 1) or frozen on the live ones (0)."""
    return tuple(_one_step(dtype, steps, faithful=faithful, encoder_again=encoder_again) for faithful in (False, True))


def assert_same_state(state, expected_state, rel):
    """Every tensor of `state` within `rel` of its expected tensor's largest value (some are 0 but for rounding)."""
    assert set(state) == set(expected_state)
    for key, value in state.items():
        expected = expected_state[key]
        torch.testing.assert_close(value, expected, rtol=0, atol=rel * expected.abs().max().item() + 1e-12, msg=key)


@pytest.mark.parametrize("encoder_again", [1.0, 0.0])
def test_faithful_order_gives_the_same_losses_at_fp32(encoder_again):
    # The fast order's Ea runs one call over several loaders' batches (SplitBatchNorm), the original's one call
    # each. At 8 pairs per loader: with fewer, the BatchNorm of this width-4 Ea amplifies fp32 rounding (at 4, its
    # codes are 6e-5 from their fp64 values in either order). Es's second pass: one pass routed by the coin against
    # the original's two branches, each coin.
    (fast, fast_state, _), (original, original_state, _) = _both_orders(torch.float32, True, encoder_again)
    assert fast["w/cycle"] > 0 and fast["prim"] > 0 and fast["recon_f"] > 0  # every loss is on
    assert fast["es_tuned"] == original["es_tuned"] == encoder_again
    for key in fast:
        torch.testing.assert_close(fast[key], original[key], rtol=1e-4, atol=1e-6, msg=key)
    # D's step (the first update) saw the same swaps and real images
    for key, value in fast_state.items():
        if key.startswith("dis."):
            torch.testing.assert_close(value, original_state[key], rtol=0, atol=1e-6)


@pytest.mark.parametrize("encoder_again", [1.0, 0.0])
def test_fast_order_computes_the_original_gradients_at_fp64(encoder_again):
    # the batched calls change nothing but the rounding: in fp64 every network's gradients and Ea's running
    # statistics (stepped once per loader batch, in order) agree to 1e-9, which fp32 cannot show for this
    # ill-conditioned tiny Ea (a few of its gradients differ by percents between orders there, as before Ea batched).
    # Es's second pass: the fast order's one pass routed by the coin gives the gradients of the original's branch
    (fast, fast_state, fast_calls), (original, original_state, original_calls) = _both_orders(torch.float64, False,
                                                                                             encoder_again)
    assert fast["es_tuned"] == original["es_tuned"] == encoder_again
    for key in fast:
        torch.testing.assert_close(fast[key], original[key], rtol=1e-6, atol=1e-9, msg=key)  # fp32 loss terms
    assert any(key.startswith("ea.") and key.endswith("running_var") for key in fast_state)
    assert_same_state(fast_state, original_state, 1e-9)
    # fast: Ea's own codes of a, p, b, q in one call (without gradient; stepping its running statistics as the
    # original's calls on the clean images do), the frozen view's code and primary logits of the two (unerased)
    # swaps for the code reconstruction and id_gen in a second, Ea's identity losses (a, b, p, q and the two swaps)
    # in a third. The original runs Ea once per loader batch: 4 codes in each of its two generator passes, one per
    # swap for the generator losses (its per-iteration deep copy carries the hook), 6 identity batches.
    assert fast_calls == [("ea", 32), ("frozen", 16), ("ea", 48)]
    assert original_calls == [("ea", 8)] * 16


def test_clean_real_images_step_eas_running_statistics():
    # the original encodes the clean real images with Ea in training mode: they enter its running statistics
    # (evaluation normalizes by them), besides the erased identity-loss inputs and the swaps
    from reidfast.models.baseline import ReidBaseline
    teacher_state = ReidBaseline(4, last_stride=1, width=4, pretrained="none", log=lambda m: None).state_dict()
    method = _method(False, teacher_state, erasing=0.0)
    g = torch.Generator().manual_seed(1)
    batch = {"image": torch.randint(0, 256, (16, 2, 3, 64, 32), generator=g, dtype=torch.uint8),
             "pid": torch.tensor([[i % 4] * 2 for i in range(16)])}
    bn = method.ea.backbone.bn1
    before = bn.num_batches_tracked.item()
    method.train_step(batch, 1)  # every loss on (warm_iters 0): codes 4, identity losses 4 + the 2 swaps
    assert bn.num_batches_tracked.item() - before == 10


@pytest.fixture
def one_thread():
    """torch on one thread for the test (a few steps: two threads on a shared 2-core machine spin on each other)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.mark.parametrize("faithful", [False, True])
@pytest.mark.parametrize("encoder_again", [1.0, 0.0])
def test_structure_reconstruction_trains_es_or_g_by_the_coin(faithful, encoder_again, one_thread):
    # the published use_encoder_again: with the coin up (always, at 1) Es encodes the swaps detached and the
    # structure code reconstruction trains Es's parameters, no gradient reaching G through the swaps; down (always,
    # at 0) a frozen Es encodes the live swaps: the gradient reaches the swaps and G, not Es's parameters.
    # recon_s alone, by autograd.grad, in the step itself: G's gradient from it as the step computes it, and Es's
    # and the swaps' from it on leaf copies of the swaps (Es also gets G's gradient back through s_a = Es(x_a))
    method = _method(faithful, _teacher_state(), warm_iters=0, encoder_again=encoder_again)
    es = list(method.gen.encoder.parameters())
    g = [*method.gen.decoder.parameters(), *method.gen.mlp.parameters()]
    real, seen = method.generator_losses, {}

    def isolated(*args):
        swaps = args[8]
        out = real(*args)
        seen["g"] = torch.autograd.grad(out[0]["recon_s"], g, retain_graph=True, allow_unused=True)
        leaves = [x.detach().requires_grad_(True) for x in swaps]
        alone = real(*args[:8], leaves, *args[9:])[0]["recon_s"]
        grads = torch.autograd.grad(alone, leaves + es, allow_unused=True)
        seen["swaps"], seen["es"] = grads[:len(leaves)], grads[len(leaves):]
        return out

    method.generator_losses = isolated
    losses = method.train_step(_small_batch(5), 0)
    some = lambda grads: any(x is not None and x.any() for x in grads)  # noqa: E731
    assert some(seen["es"]) == (encoder_again == 1) and some(seen["swaps"]) == (encoder_again == 0)
    assert some(seen["g"]) == (encoder_again == 0)
    assert losses["recon_s"] > 0 and losses["es_tuned"] == encoder_again


def test_the_structure_coin_is_drawn_each_iteration_from_the_run_generator(one_thread):
    # the default, the published 0.5: a coin every iteration (the reconstructions off here: cheap steps), both
    # values within a few iterations of two seeds; drawn from the run's generator (checkpointed, so a resumed run
    # draws the same: test_resume_continues_the_schedule compares the logged coins), not torch's global one
    coins = []
    for seed in (0, 1):
        method = _method(False, _teacher_state(), seed=seed, warm_iters=100)
        assert method.run.cfg["encoder_again"] == 0.5
        state = method.run.generator.get_state()
        drawn = [method.train_step(_small_batch(9), it)["es_tuned"].item() for it in range(3)]
        method.run.generator.set_state(state)
        torch.manual_seed(seed + 7)
        assert [method.train_step(_small_batch(9), it)["es_tuned"].item() for it in range(3)] == drawn
        coins += drawn
    assert set(coins) == {0.0, 1.0}, coins


def _small_batch(seed: int, pairs: int = 4):
    """2 + 2 (image, same-identity image) pairs of 64x32: a's identities 0, 1, b's 2, 3."""
    g = torch.Generator().manual_seed(seed)
    return {"image": torch.randint(0, 256, (pairs, 2, 3, 64, 32), generator=g, dtype=torch.uint8),
            "pid": torch.tensor([[i % 4] * 2 for i in range(pairs)])}


def _teacher_state():
    from reidfast.models.baseline import ReidBaseline
    torch.manual_seed(0)
    return ReidBaseline(4, last_stride=1, width=4, pretrained="none", log=lambda m: None).state_dict()


@pytest.mark.parametrize("faithful", [False, True])
def test_real_image_identity_losses_follow_the_published_configuration(faithful):
    # L_id = CE(primary(a), y_a) + CE(primary(b), y_b) + lambda_fine [CE(fine(a), y_a) + CE(fine(b), y_b)] and
    # L_pid = CE(primary(p), y_a) + CE(primary(q), y_b), by hand from the logits Ea's heads gave in the step:
    # before the warm-up ends (lambda_fine 0: the fine head learns nothing yet) and after it
    import torch.nn.functional as F
    method = _method(faithful, _teacher_state(), warm_iters=2, pid_w=0.7)
    outputs = []
    method.ea.register_forward_hook(  # Ea itself (under --faithful its deep copy carries the hook: left out),
        # with gradient (its gradient-free codes of the real images are not the identity losses' calls)
        lambda m, args, out: outputs.append(out) if m is method.ea and torch.is_grad_enabled() else None)
    method.run.step = lambda optimizer: None  # gradients without updates: the fine head's are looked at below
    cfg = method.run.cfg
    for it, fine_w in ((0, 0.0), (3, 0.2 * 1.0)):  # warm-up 2, ramp 0.5 per iteration: lambda_prim 1.0 at it 3
        outputs.clear()
        losses = method.train_step(_small_batch(7), it)
        assert losses["w/fine"].item() == pytest.approx(fine_w)
        primary = torch.cat([out[1] for out in outputs]).split(2)  # a, b, p, q (then the swaps after the warm-up)
        fine = torch.cat([out[2] for out in outputs]).split(2)
        assert len(primary) == (6 if it == 3 else 4)
        y_a, y_b = torch.tensor([0, 1]), torch.tensor([2, 3])
        ce = F.cross_entropy
        expected_id = (ce(primary[0], y_a) + ce(primary[1], y_b)
                       + fine_w * (ce(fine[0], y_a) + ce(fine[1], y_b)))
        expected_pid = ce(primary[2], y_a) + ce(primary[3], y_b)
        torch.testing.assert_close(losses["id"], expected_id.detach())
        torch.testing.assert_close(losses["pid"], expected_pid.detach())
        assert expected_pid > 0
        w = {k[2:]: v.item() for k, v in losses.items() if k.startswith("w/")}
        total = (cfg["recon_x_w"] * losses["recon_x"] + cfg["id_gen_w"] * losses["id_gen"]
                 + cfg["adv_w"] * losses["adv"] + cfg["id_w"] * losses["id"] + 0.7 * losses["pid"]
                 + sum(w[k] * losses[k] for k in ("recon_f", "recon_s", "cycle", "prim", "fine")))
        torch.testing.assert_close(losses["loss"], total)
        fine_grads = [p.grad for p in method.ea.fine.parameters()]
        if it == 0:  # nothing else trains the fine head before the warm-up ends
            assert all(g is None or not g.any() for g in fine_grads)
        else:
            assert any(g is not None and g.any() for g in fine_grads)


@pytest.mark.parametrize("faithful", [False, True])
def test_random_erasing_reaches_only_the_real_identity_inputs(faithful):
    # erase probability 1 and a fill no image has (7 in normalized space): Ea's identity inputs a, b, p, q are
    # erased, and nothing else is: not the swaps Ea learns from, not what its frozen view (or --faithful's copy),
    # the teacher, Es or D see
    method = _method(faithful, _teacher_state(), warm_iters=0, erasing=1.0)  # every loss on
    method.erase.erase_value = 7.0
    seen = {"ea": [], "codes": [], "frozen": [], "teacher": [], "es": [], "dis": []}
    watched = [(method.ea.backbone, "ea"), (method.gen.encoder, "es"), *[(scale, "dis") for scale in method.dis.scales]]

    def record(module, args):
        name = next((n for m, n in watched if m is module), "frozen")  # the frozen view or the copy of Ea
        if name == "ea" and not torch.is_grad_enabled():  # Ea's gradient-free codes of the real images
            name = "codes"
        seen[name].append(args[0].detach().clone())

    for module in (method.ea.backbone, method.frozen_ea.backbone, *[m for m, _ in watched[1:]]):
        module.register_forward_pre_hook(record)
    teacher_labels = method.teacher_labels
    method.teacher_labels = lambda images: seen["teacher"].append(images.detach().clone()) or teacher_labels(images)
    method.train_step(_small_batch(8), 0)
    fills = {name: [(x == 7.0).flatten(1).sum(1) for x in inputs] for name, inputs in seen.items()}
    assert all(fills[name] for name in fills), {name: len(f) for name, f in fills.items()}
    for name in ("codes", "frozen", "teacher", "es", "dis"):
        assert all(not f.any() for f in fills[name]), name
    ea_inputs = torch.cat(seen["ea"]).split(2)  # a, b, p, q, x_ba, x_ab
    assert len(ea_inputs) == 6
    erased = torch.cat(fills["ea"]).split(2)
    assert all(e.min() > 0 for e in erased[:4]) and not any(e.any() for e in erased[4:])
    # outside the erased rectangles, the images the generator pass encoded (x_a, x_p, x_b, x_q: the 4 batches of
    # Ea's gradient-free codes); the swaps, as the frozen view saw them in the generator losses (its last 2)
    frozen = torch.cat(seen["frozen"]).split(2)
    x_a, x_p, x_b, x_q = torch.cat(seen["codes"]).split(2)
    for got, real in zip(ea_inputs[:4], (x_a, x_b, x_p, x_q)):
        assert torch.equal(torch.where(got == 7.0, real, got), real)
    assert torch.equal(torch.cat(ea_inputs[4:]), torch.cat(frozen[-2:]))


@pytest.mark.parametrize("faithful", [False, True])
def test_teacher_labels_by_batch_statistics_and_keeps_its_running_statistics(faithful):
    # the published configuration's teacher normalizes by the statistics of the batch it is given (train_bn): each
    # swap batch and its mirror as a call of its own, dropout off; its running statistics and parameters untouched
    import copy
    method = _method(faithful, _teacher_state(), warm_iters=0)
    teacher = method.teacher
    before = {k: v.clone() for k, v in teacher.state_dict().items()}
    labelled = []
    real_labels = method.teacher_labels

    def recorded(images):
        soft = real_labels(images)
        labelled.append((images.detach().clone(), soft))
        return soft

    method.teacher_labels = recorded
    method.train_step(_small_batch(9), 0)
    images = torch.cat([x for x, _ in labelled])
    soft = torch.cat([y for _, y in labelled])
    assert images.shape[0] == 4  # x_ba and x_ab, 2 each
    reference = copy.deepcopy(teacher).eval()  # BatchNorm alone in training mode, on a copy (its statistics move)
    for m in reference.modules():
        if isinstance(m, torch.nn.modules.batchnorm._BatchNorm):
            m.train()
    with torch.no_grad():
        expected = torch.cat([(reference(x)[0].softmax(1) + reference(x.flip(3))[0].softmax(1)) / 2
                              for x in images.split(2)])
        running = torch.cat([(teacher(x)[0].softmax(1) + teacher(x.flip(3))[0].softmax(1)) / 2
                             for x in images.split(2)])
    torch.testing.assert_close(soft, expected, rtol=1e-4, atol=1e-5)
    assert not torch.allclose(soft, running, atol=1e-3)  # not what the running statistics give
    after = teacher.state_dict()
    assert all(torch.equal(after[k], v) for k, v in before.items())  # running statistics and counters included
    assert not teacher.training and all(p.grad is None and not p.requires_grad for p in teacher.parameters())


def test_r1_penalty_equals_the_double_backward_of_autograd():
    # D's scores on real images and their R1 penalty through torch.func.grad (which torch.compile traces) against
    # autograd.grad(create_graph=True) per scale: the scores, the penalty and D's parameter gradients of both
    from reidfast.models.dgnet import MultiScaleDiscriminator
    from reidfast.models.baseline import ReidBaseline
    from reidfast.ops import use_backend
    teacher_state = ReidBaseline(4, last_stride=1, width=4, pretrained="none", log=lambda m: None).state_dict()
    method = _method(False, teacher_state)
    torch.manual_seed(3)
    reals = [torch.randn(3, 3, 64, 32), torch.randn(3, 3, 64, 32)]
    dis = method.dis
    inputs = [x.clone().requires_grad_(True) for x in reals]
    with use_backend("reference"):  # D's convolutions as F.conv2d: autograd's own second derivative
        outs = [dis(x) for x in inputs]
        expected_r1 = 0
        for scale in range(len(dis.scales)):
            grads = torch.autograd.grad(sum(o[scale].sum() for o in outs), inputs, create_graph=True)
            expected_r1 = expected_r1 + sum(g.square().flatten(1).sum(1).mean() for g in grads)
        expected_loss = expected_r1 + sum(o.square().mean() for per_input in outs for o in per_input)
        expected = torch.autograd.grad(expected_loss, list(dis.parameters()))
    scores, r1 = method.real_scores_and_r1(torch.cat(reals), [3, 3])
    assert len(scores) == len(dis.scales) and isinstance(dis, MultiScaleDiscriminator)
    torch.testing.assert_close(r1, expected_r1)
    for got, per_scale in zip(scores, zip(*outs)):
        torch.testing.assert_close(got, torch.cat(per_scale))
    loss = r1 + sum(o.square().mean() for s in scores for o in s.split([3, 3]))
    for a, b in zip(torch.autograd.grad(loss, list(dis.parameters())), expected):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-7)
    assert r1 > 0


@pytest.mark.parametrize("backend, slow_formula", [("auto", False), ("reference", True)])
def test_r1_reaches_d_without_convolving_over_the_batch(backend, slow_formula):
    # D's convolutions are PenaltyConv2d: R1's gradient reaches D's weights by weight-gradient kernels; the reference
    # backend (autograd's formula) shows that the check sees the slow form when it is there
    from reidfast.models.baseline import ReidBaseline
    from reidfast.ops import use_backend
    teacher_state = ReidBaseline(4, last_stride=1, width=4, pretrained="none", log=lambda m: None).state_dict()
    method = _method(False, teacher_state)
    images = torch.randn(5, 3, 64, 32, generator=torch.Generator().manual_seed(6))
    with use_backend(backend):
        _, r1 = method.real_scores_and_r1(images, [5])
        with ConvolutionsOverTheBatch(5) as seen:
            torch.autograd.grad(r1, list(method.dis.parameters()), allow_unused=True)  # the last bias: no part in it
    assert bool(seen.calls) == slow_formula, seen.calls


def test_compiled_r1_penalty_equals_the_eager_one():
    # through dynamo and aot_autograd (aot_eager: no code generation): scores, penalty and D's gradients
    from reidfast.models.baseline import ReidBaseline
    teacher_state = ReidBaseline(4, last_stride=1, width=4, pretrained="none", log=lambda m: None).state_dict()
    method = _method(False, teacher_state)
    images = torch.randn(4, 3, 64, 32, generator=torch.Generator().manual_seed(5))
    results = []
    torch._dynamo.reset()
    for fn in (method.real_scores_and_r1, torch.compile(method.real_scores_and_r1, backend="aot_eager",
                                                         fullgraph=True)):
        scores, r1 = fn(images, [2, 2])
        loss = r1 + sum(s.square().mean() for s in scores)
        results.append((loss.detach(), torch.autograd.grad(loss, list(method.dis.parameters()))))
    torch._dynamo.reset()
    (eager_loss, eager_grads), (compiled_loss, compiled_grads) = results
    torch.testing.assert_close(compiled_loss, eager_loss)
    for a, b in zip(compiled_grads, eager_grads):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-7)


def test_frozen_view_follows_ea_without_training_it():
    # the generator-side losses see Ea through a view made once: Ea's parameter storage (every update of Ea shows
    # through, with no copy per iteration), no gradient, BatchNorm by batch statistics with no running statistics
    from reidfast.models.baseline import ReidBaseline
    teacher_state = ReidBaseline(4, last_stride=1, width=4, pretrained="none", log=lambda m: None).state_dict()
    method = _method(False, teacher_state)
    g = torch.Generator().manual_seed(3)
    batch = {"image": torch.randint(0, 256, (4, 2, 3, 64, 32), generator=g, dtype=torch.uint8),
             "pid": torch.tensor([[i % 4] * 2 for i in range(4)])}
    before = {k: v.clone() for k, v in method.ea.state_dict().items()}
    method.train_step(batch, 1)
    for (name, p), q in zip(method.ea.named_parameters(), method.frozen_ea.parameters()):
        assert q.data_ptr() == p.data_ptr() and not q.requires_grad and q.grad is None, name
    assert not torch.equal(method.ea.backbone.conv1.weight, before["backbone.conv1.weight"])  # Ea did train
    assert list(method.frozen_ea.buffers()) == []  # nothing of Ea's to update, nothing of its own
    norms = [m for m in method.frozen_ea.modules() if isinstance(m, torch.nn.modules.batchnorm._BatchNorm)]
    assert norms and not any(m.track_running_stats for m in norms)
    method.ea.load_state_dict(before)  # a resume loads in place: the view shows the loaded values
    torch.testing.assert_close(method.frozen_ea.backbone.conv1.weight, before["backbone.conv1.weight"])


def test_the_compiled_step_is_three_graphs_made_once(compiled_graphs):
    # the fast order's step is three whole functions (the generator pass, D's losses with R1, the G + Ea step's
    # losses), each one graph (a graph break would add another) made in the first iteration and reused after (a
    # recompile per step would make compile slower than eager); the warm-up's end turns on the code and cycle
    # reconstructions and primary learning, which the G + Ea losses' graph is made once more for; Es's coin is a
    # tensor in that graph: both of its values (Es tuned on the detached swaps, then frozen on the live ones) in one
    from reidfast.models.baseline import ReidBaseline
    graphs = compiled_graphs
    teacher_state = ReidBaseline(4, last_stride=1, width=4, pretrained="none", log=lambda m: None).state_dict()
    g = torch.Generator().manual_seed(4)
    batch = {"image": torch.randint(0, 256, (4, 2, 3, 64, 32), generator=g, dtype=torch.uint8),
             "pid": torch.tensor([[i % 4] * 2 for i in range(4)])}
    # channels_last as on a GPU: every image a network sees keeps that layout (an augmentation that handed back the
    # other layout compiled Ea's ResNet-50 once more)
    method = _method(False, teacher_state, compile=True, channels_last=True, warm_iters=2)
    whole_step = ["_generator_pass", "_discriminator_losses", "_generator_losses"]
    for it, expected in ((0, whole_step), (1, whole_step), (2, whole_step + ["_generator_losses"]),
                         (3, whole_step + ["_generator_losses"])):
        method.run.cfg["encoder_again"] = float(it % 2 == 0)  # the coin: up at iterations 0 and 2, down at 1 and 3
        losses = method.train_step(batch, it)
        assert graphs == expected, f"after iteration {it}: {graphs}"
        assert (losses["cycle"] > 0) == (it >= 2) and (losses["prim"] > 0) == (it >= 2)
        assert losses["es_tuned"] == float(it % 2 == 0)


def test_the_compiled_step_computes_the_eager_gradients_at_fp64(monkeypatch):
    # the GPU's default: the step's three functions compiled. Through dynamo's capture and aot_autograd's joint
    # graphs (aot_eager: inductor's code generation, minutes on a CPU, is torch's to get right), one iteration with
    # every loss on gives the eager losses, every network's gradients and Ea's running statistics
    real_compile = torch.compile
    monkeypatch.setattr(torch, "compile", lambda fn, **kwargs: real_compile(fn, **{**kwargs, "backend": "aot_eager"}))
    torch._dynamo.reset()
    try:
        eager, eager_state, _ = _one_step(torch.float64, False, encoder_again=1.0)
        compiled, compiled_state, _ = _one_step(torch.float64, False, encoder_again=1.0, compile=True)
    finally:
        torch._dynamo.reset()
    assert compiled["w/cycle"] > 0 and compiled["prim"] > 0  # every loss is on
    for key in eager:
        torch.testing.assert_close(compiled[key], eager[key], rtol=1e-6, atol=1e-9, msg=key)
    assert any(key.startswith("gen.") and key.endswith(".grad") for key in compiled_state)
    assert_same_state(compiled_state, eager_state, 1e-9)


def test_eval_checkpoint_rebuilds_the_run_without_its_teacher(short_run, tmp_path):
    # evaluation needs Ea only: the teacher is loaded for training (configure), not by the constructor
    from reidfast.eval.__main__ import main as eval_main
    summary = tmp_path / "summary.json"
    assert eval_main(["--checkpoint", str(short_run), "--json", str(summary)]) == 0
    trained = json.loads((short_run / "metrics.json").read_text())
    assert json.loads(summary.read_text())["mAP"] == pytest.approx(trained["mAP"], abs=1e-6)


def test_sample_grid_rows_keep_appearance_and_columns_keep_structure():
    from reidfast.data import normalize
    from reidfast.models.baseline import ReidBaseline
    teacher_state = ReidBaseline(4, last_stride=1, width=4, pretrained="none", log=lambda m: None).state_dict()
    method = _method(False, teacher_state)
    g = torch.Generator().manual_seed(2)
    batch = {"image": torch.randint(0, 256, (3, 2, 3, 64, 32), generator=g, dtype=torch.uint8)}
    grid = method.sample_images(batch)
    assert method.ea.training and method.gen.training  # the training modes are restored
    assert grid.shape == (4 * 8, 3, 64, 32)  # inputs + 3 appearance rows, padded to the 8 columns of a row
    images = normalize(batch["image"][:, 0])
    torch.testing.assert_close(grid[:3], images)
    assert torch.equal(grid[3:8], torch.zeros(5, 3, 64, 32))
    method.ea.eval()
    with torch.no_grad():  # row 2 (the 2nd image's appearance), column 3 (the 3rd image's structure)
        tile = method.gen.decode(method.gen.encode(images[2:3]), method.ea.appearance(images[1:2]))
    # the grid decodes its tiles in one batched call: float32 rounding apart, the same image
    torch.testing.assert_close(grid[2 * 8 + 2], tile[0], rtol=1e-4, atol=1e-4)


def _test_images(tiny_root, count):
    return sorted(str(p) for p in (tiny_root / "bounding_box_test").glob("*.jpg"))[:count]


def test_generate_swaps_codes_on_any_images(short_run, tiny_root, tmp_path):
    import numpy as np
    from PIL import Image

    from reidfast.data import denormalize
    from reidfast.train.methods import load_trained_method
    from reidfast.generate.__main__ import main as generate_main
    from reidfast.generate.common import load_images
    appearance, structure = _test_images(tiny_root, 2), _test_images(tiny_root, 5)[2:]
    out = tmp_path / "gen"
    assert generate_main(["dgnet", "--checkpoint", str(short_run), "--device", "cpu", "--out", str(out),
                          "--appearance", *appearance, "--structure", *structure]) == 0
    grid = Image.open(out / "swap_grid.png")
    assert grid.size == (4 * (32 + 2) + 2, 3 * (64 + 2) + 2)  # (1 + 3 structures) x (1 + 2 appearances)
    method, cfg = load_trained_method(short_run, torch.device("cpu"), log=lambda m: None)
    # the images are read as the run reads its own: resized bicubically (DG-Net's resize_filter)
    expected = method.swap_codes(load_images(appearance, (64, 32), torch.device("cpu"), "a", "bicubic"),
                                 load_images(structure, (64, 32), torch.device("cpu"), "s", "bicubic"))
    for i in range(2):
        for j in range(3):  # each PNG holds its generated image up to 8-bit rounding
            saved = torch.from_numpy(np.array(Image.open(out / f"a{i}_s{j}.png"))).permute(2, 0, 1).float() / 255
            torch.testing.assert_close(saved, denormalize(expected[i, j][None])[0].clamp(0, 1),
                                       atol=0.5 / 255 + 1e-5, rtol=0)


def test_generate_quality_reports_frechet_distance_and_ssim(short_run, tmp_path, capsys):
    from reidfast.generate.__main__ import main as generate_main
    out = tmp_path / "q"
    assert generate_main(["dgnet", "--checkpoint", str(short_run), "--device", "cpu", "--out", str(out),
                          "--quality", "--num-images", "12"]) == 0
    report = json.loads((out / "quality.json").read_text())
    assert math.isfinite(report["frechet_distance"]) and report["frechet_distance"] > 0
    assert "NOT comparable" in report["feature_network"]
    assert -1 <= report["ssim_generated"] <= 1 and -1 <= report["ssim_real_same_identity"] <= 1
    printed = capsys.readouterr().out
    assert f"real same-identity {report['ssim_real_same_identity']:.3f}" in printed  # rounded as the others


def test_generate_errors_name_the_argument(short_run, teacher, tiny_root, tmp_path, capsys):
    from reidfast.generate.__main__ import main as generate_main
    image = _test_images(tiny_root, 1)
    assert generate_main(["dgnet", "--checkpoint", str(short_run), "--appearance", *image, "--out",
                          str(tmp_path)]) == 2
    assert "--appearance and --structure go together" in capsys.readouterr().err
    assert generate_main(["dgnet", "--checkpoint", str(short_run), "--appearance", str(tmp_path / "nope.jpg"),
                          "--structure", *image, "--out", str(tmp_path)]) == 2
    assert "--appearance: " in capsys.readouterr().err
    (tmp_path / "broken.jpg").write_bytes(b"not a jpeg")
    assert generate_main(["dgnet", "--checkpoint", str(short_run), "--appearance", str(tmp_path / "broken.jpg"),
                          "--structure", *image, "--out", str(tmp_path)]) == 2
    assert f"error: --appearance: {tmp_path / 'broken.jpg'}: cannot be read as an image (" in capsys.readouterr().err
    assert generate_main(["dgnet", "--checkpoint", str(teacher), "--quality", "--out", str(tmp_path)]) == 2
    assert "is a baseline run, not dgnet" in capsys.readouterr().err


def test_augmentation_follows_the_published_pipeline():
    # the crop pads by repeating the border pixels; random erasing (identity-loss inputs only) draws the box's area
    # in 0.02-0.4 of the image and its aspect ratio uniformly in [0.3, 3.33], and fills it with 0
    from reidfast.models.baseline import ReidBaseline
    teacher_state = ReidBaseline(4, last_stride=1, width=4, pretrained="none", log=lambda m: None).state_dict()
    method = _method(False, teacher_state)
    assert (method.augment.pad_mode, method.augment.pad, method.augment.erase_p) == ("edge", 2, 0.0)
    erase = method.erase
    assert (erase.erase_area, erase.erase_ratio_scale, erase.erase_value, erase.erase_p, erase.flip_p, erase.pad) \
        == ((0.02, 0.4), "linear", 0.0, 0.5, 0.0, 0)
    assert erase.erase_ratio == pytest.approx((0.3, 1 / 0.3))
