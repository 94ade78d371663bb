import json
import sys
import types

from reidfast.train.run_log import RunLog


def test_scalars_reach_tensorboard_when_it_imports(tmp_path, monkeypatch):
    # a stand-in torch.utils.tensorboard: what the run log hands it, whether or not tensorboard is installed here
    written = []

    class SummaryWriter:
        def __init__(self, log_dir):
            written.append(("dir", log_dir))

        def add_scalar(self, tag, value, step):
            written.append((tag, value, step))

        def close(self):
            written.append(("closed",))

    monkeypatch.setitem(sys.modules, "torch.utils.tensorboard", types.SimpleNamespace(SummaryWriter=SummaryWriter))
    log = RunLog(tmp_path)
    log.write({"it": 5, "epoch": 1, "loss": 0.25, "lr/sgd": 0.01, "note": "text"}, step=5)
    log.write({"rank1": 0.5}, step=6, prefix="eval/")
    log.write({"loss": float("nan")}, step=7)
    log.write({"loss": 1.0})  # no step: the JSONL log only
    log.close()
    assert written == [("dir", str(tmp_path / "tensorboard")), ("loss", 0.25, 5), ("lr/sgd", 0.01, 5),
                       ("eval/rank1", 0.5, 6), ("loss", written[4][1], 7), ("closed",)]
    assert written[4][1] != written[4][1]  # the NaN itself: TensorBoard shows a diverged loss as such
    lines = [json.loads(line) for line in (tmp_path / "log.jsonl").read_text().splitlines()]
    assert lines[0]["it"] == 5 and lines[2] == {"loss": None} and lines[3] == {"loss": 1.0}  # JSON has no NaN


def test_without_tensorboard_the_jsonl_log_has_everything(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "torch.utils.tensorboard", None)  # an import that fails
    log = RunLog(tmp_path)
    assert log.tensorboard is None
    log.write({"it": 1, "loss": 0.5}, step=1)
    log.close()
    assert json.loads((tmp_path / "log.jsonl").read_text()) == {"it": 1, "loss": 0.5}
    assert not (tmp_path / "tensorboard").exists()
