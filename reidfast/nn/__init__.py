"""Modules built on reidfast's ops."""
from .adain import AdaIN2d, AdaINResBlock
from .batch_norm import SplitBatchNorm1d, SplitBatchNorm2d, batchnorm_groups, batchnorm_groups_of, split_batchnorm
from .conv import PenaltyConv2d
from .homography import HomographyTransformer

__all__ = ["AdaIN2d", "AdaINResBlock", "HomographyTransformer", "PenaltyConv2d", "SplitBatchNorm1d",
           "SplitBatchNorm2d", "batchnorm_groups", "batchnorm_groups_of", "split_batchnorm"]
