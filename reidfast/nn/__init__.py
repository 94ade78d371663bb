"""Modules built on reidfast's ops."""
from .adain import AdaIN2d, AdaINResBlock
from .batch_norm import SplitBatchNorm1d, SplitBatchNorm2d, batchnorm_groups, batchnorm_groups_of, split_batchnorm
from .conv import PaddedConv2d, PenaltyConv2d
from .homography import HomographyTransformer

__all__ = ["AdaIN2d", "AdaINResBlock", "HomographyTransformer", "PaddedConv2d", "PenaltyConv2d", "SplitBatchNorm1d",
           "SplitBatchNorm2d", "batchnorm_groups", "batchnorm_groups_of", "split_batchnorm"]
