"""The baseline's ClassBlock head: the 512-d bottleneck (the default) and IDE's head (no bottleneck)."""
import torch
from torch import nn

from reidfast.models.baseline import ClassBlock


def test_the_bottleneck_head_draws_its_initialization_as_it_always_has():
    # runs are reproducible across versions: the 512-d head's random draws come in the order they always did
    # (Linear, BatchNorm, classifier made, then kaiming, N(1, 0.02), N(0, 0.001)), whatever other heads exist
    torch.manual_seed(0)
    block = ClassBlock(16, 5, bottleneck=8)
    torch.manual_seed(0)
    linear, norm, classifier = nn.Linear(16, 8), nn.BatchNorm1d(8), nn.Linear(8, 5)
    nn.init.kaiming_normal_(linear.weight, a=0, mode="fan_out")
    nn.init.normal_(norm.weight, 1.0, 0.02)
    nn.init.normal_(classifier.weight, std=0.001)
    assert torch.equal(block.embed[0].weight, linear.weight) and torch.equal(block.embed[1].weight, norm.weight)
    assert torch.equal(block.classifier.weight, classifier.weight)


def test_ide_head_classifies_the_pooled_feature_itself():
    block = ClassBlock(16, 5, bottleneck=0, dropout=0.0).eval()
    pooled = torch.randn(3, 16)
    logits, feature = block(pooled)
    assert torch.equal(feature, pooled) and logits.shape == (3, 5)
    assert torch.allclose(logits, block.classifier(pooled))


def test_auto_weights_prefer_torchvisions_original_resnet50_file(tmp_path, monkeypatch):
    # the published methods start from the original (V1) ImageNet weights; a newer V2 file in the same cache, or
    # a copy of other weights downloaded later, does not replace them
    import os

    from reidfast.models.backbone import hub_cache_resnet50
    hub = tmp_path / "hub" / "checkpoints"
    hub.mkdir(parents=True)
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    assert hub_cache_resnet50() is None
    for age, name in enumerate(["resnet50-11ad3fa6.pth", "resnet50-0676ba61.pth", "resnet50-other.pth"]):
        (hub / name).write_bytes(b"")
        os.utime(hub / name, (1000 - age, 1000 - age))  # the V2 file newest
    assert hub_cache_resnet50() == hub / "resnet50-0676ba61.pth"
    (hub / "resnet50-0676ba61.pth").unlink()
    assert hub_cache_resnet50() == hub / "resnet50-11ad3fa6.pth"  # no V1: the newest
