"""The compile progress lines the trainer and the training benchmark print while torch.compile works."""
import re

import torch

from reidfast.train.compile_progress import compile_progress


def test_each_compiled_graph_gets_a_line_and_the_callbacks_go_away_after():
    lines = []
    with compile_progress(lines.append):
        double_sin = torch.compile(lambda x: (2 * x).sin(), backend="eager", dynamic=False)
        double_sin(torch.randn(3))
        double_sin(torch.randn(3))  # cached: no compilation
        double_sin(torch.randn(5))  # a new shape: a second graph
    assert len(lines) == 2, lines
    # (ids are frame/recompile numbers, counted over the whole process)
    assert re.fullmatch(r"compile: graph \d+/0 \(forward\) took \d+\.\d s; 1 so far, \d+ s of compilation", lines[0])
    assert re.match(r"compile: graph \d+/1 \(forward\)", lines[1])
    assert "2 so far" in lines[1]
    plus_one = torch.compile(lambda x: x + 1, backend="eager")
    plus_one(torch.randn(2))
    assert len(lines) == 2  # outside the context nothing is logged
