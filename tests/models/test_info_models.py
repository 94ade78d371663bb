"""python -m reidfast.info --model METHOD: the parameter counts of every method's networks."""
import pytest

from reidfast.info import main


def test_fdgan_and_sagan_parameter_reports(capsys):
    main(["--model", "fdgan"])
    out = capsys.readouterr().out
    assert "23,508,032" in out  # E: ResNet-50 without fc (D_id has the same backbone plus its head)
    assert f"{2 * 2048 + 2048 * 2 + 2:,}" in out  # V: BatchNorm1d(2048) + Linear(2048, 2)
    main(["--model", "sagan", "--num-classes", "702"])
    out = capsys.readouterr().out
    assert "adapt: s1" in out and "adapt: g2" in out and "reid: model" in out and "702 training" in out


def test_unknown_model_is_an_argparse_error(capsys):
    with pytest.raises(SystemExit):
        main(["--model", "resnet"])
    assert "--model" in capsys.readouterr().err
