"""Networks only (no losses, no training): the ResNet-50 backbone, the re-id baseline, the GAN methods' nets."""
from .backbone import ResNet50, load_imagenet_weights, resnet50
from .baseline import ClassBlock, ReidBaseline

__all__ = ["ResNet50", "resnet50", "load_imagenet_weights", "ClassBlock", "ReidBaseline"]
