"""The backend registry as users query it: explain_backend and resolve_backend on unknown ops, and
`python -m reidfast.info` reporting every op."""
import pytest
import torch

from reidfast import ops
from reidfast.ops import _backend

# the ops of the README's table, each with a backend setting
OPS = ("adain", "conv2d", "homography_warp", "rank_eval", "reflection_pad2d")


@pytest.mark.parametrize("query", [ops.explain_backend, ops.resolve_backend])
def test_an_unknown_op_is_an_error_listing_the_known_ones(query):
    with pytest.raises(ValueError, match=r"unknown op 'foo'; known ops: adain, conv2d, homography_warp, rank_eval, "
                                         r"reflection_pad2d"):
        query("foo", torch.device("cpu"))


def test_every_op_has_a_reference_and_an_explanation():
    for op in OPS:
        reasons = dict(ops.explain_backend(op, "cpu"))
        assert reasons["reference"] == "", op
        with ops.use_backend("reference"):
            assert ops.resolve_backend(op, torch.device("cpu")) == "reference"


def test_devices_may_be_named_by_strings():
    for op in OPS:
        assert ops.resolve_backend(op, "cpu") == ops.resolve_backend(op, torch.device("cpu"))


def _call(op):
    x = torch.randn(1, 2, 3, 3)
    return {"adain": lambda: ops.adain(x, torch.ones(1, 2), torch.zeros(1, 2)),
            "conv2d": lambda: ops.conv2d(x, torch.randn(1, 2, 1, 1)),
            "homography_warp": lambda: ops.homography_warp(x, torch.eye(3)[None]),
            "rank_eval": lambda: ops.rank_eval([1], [1, 2], [0], [1, 1], distmat=torch.rand(1, 2)),
            "reflection_pad2d": lambda: ops.reflection_pad2d(x, (1, 1, 1, 1))}[op]


@pytest.mark.parametrize("op", OPS)
def test_a_misspelt_environment_setting_is_the_same_error_in_every_op(op, monkeypatch):
    # REIDFAST_BACKEND is read at import and checked when an op resolves its backend: conv2d, which has no kernels,
    # must not run on regardless of a setting that every other op refuses (a misspelt "reference" included)
    monkeypatch.setattr(ops._backend, "_current", "referense")
    with pytest.raises(ValueError, match="REIDFAST_BACKEND must be one of auto, cuda, triton, cpu, reference; got "
                                         "'referense'"):
        _call(op)()


def test_info_refuses_a_class_count_below_one(capsys):
    from reidfast.info import main
    with pytest.raises(SystemExit):
        main(["--model", "baseline", "--num-classes", "0"])
    assert "--num-classes must be at least 1, got 0" in capsys.readouterr().err


def test_info_reports_the_backend_of_every_op(capsys):
    from reidfast.info import main
    main([])
    lines = capsys.readouterr().out.splitlines()
    for op in OPS:
        chosen = [line.split("->")[1].split()[0] for line in lines if line.split()[:3] == [op, "on", "cpu"]]
        assert chosen == [ops.resolve_backend(op, torch.device("cpu"))], (op, lines)


def test_info_reports_a_misspelt_backend_variable_in_one_line(monkeypatch, capsys):
    from reidfast.info import main
    from reidfast.ops import _backend
    monkeypatch.setattr(_backend, "_current", "refrence")  # as REIDFAST_BACKEND=refrence leaves it at import
    with pytest.raises(SystemExit) as exc:
        main([])
    assert exc.value.code == 2
    lines = capsys.readouterr().out.splitlines()
    assert lines[-2:] == ["backend setting: refrence", "error: the environment variable REIDFAST_BACKEND must be one "
                          "of auto, cuda, triton, cpu, reference; got 'refrence'"]


@pytest.mark.parametrize("triton_version, numpy_version, broken", [
    ((3, 6), (2, 4), True), ((3, 5), (2, 5), True),  # the interpreter's loop bounds fail under numpy 2.4
    ((3, 6), (2, 3), False), ((3, 7), (2, 5), False), ((3, 8), (2, 4), False), ((), (2, 5), False)])
def test_the_triton_interpreter_is_refused_with_the_numpy_it_cannot_run_with(triton_version, numpy_version, broken,
                                                                              monkeypatch):
    versions = {"triton": triton_version, "numpy": numpy_version}
    monkeypatch.setattr(_backend, "_version", versions.__getitem__)
    problem = _backend._triton_interpreter_problem()
    assert bool(problem) == broken
    if broken:  # the message names both versions and the two ways out
        assert ".".join(map(str, triton_version)) in problem and ".".join(map(str, numpy_version)) in problem
        assert "triton>=3.7" in problem and "numpy<2.4" in problem
