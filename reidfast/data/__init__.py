"""reidfast.data: person re-id datasets, synthetic data, poses, masks, samplers and batched augmentation.

Datasets (each returns a :class:`ReidDataset` of train / query / gallery :class:`Sample` lists; 0-based
camera ids; train pids relabelled 0..K-1, query/gallery pids kept, Market-1501's -1 junk and 0 distractor
gallery labels included)::

    ds = get_dataset("market1501", "/data")       # also dukemtmc, msmt17, cuhk03, prid, synthetic
    ds = get_dataset()                            # the synthetic dataset, generated once into the user cache
    parser = add_dataset_args(argparse.ArgumentParser()); ds = dataset_from_args(parser.parse_args())

    @register_dataset("mydata")                   # a new dataset: any callable (root, **options) -> ReidDataset
    def read_mydata(root, **options): ...

Synthetic data: ``python -m reidfast.data.synthetic --out DIR [--ids N] [--cameras C] [--domain a|b]
[--seed S] [--height H --width W]`` (Market-1501 layout, ``annotations.csv`` keypoints, ``masks/`` PNGs).

Poses: :func:`read_keypoints_csv`, :func:`read_fdgan_pose`, :func:`keypoints_to_heatmaps`,
:func:`flip_keypoints`, :func:`flip_heatmaps`. Masks: :class:`MaskReader`.

Loading: :class:`ImageDataset` (uint8 tensors decoded in worker processes), :func:`make_loader`, samplers
:class:`IdentityBalancedBatchSampler` (PK), :class:`SameIdentityPairSampler` (DG-Net),
:class:`VerificationPairSampler` (FD-GAN, 1 positive : 3 negatives), :class:`UnpairedDomainSampler` (SA-GAN)
with :class:`DomainPairDataset`; :class:`BatchAugment` for on-device flip / pad+crop / erasing,
:class:`RandomResizedRectCrop` for a resized random box.
"""
from .base import DatasetFormatError, DatasetNotFoundError, ReidDataset, Sample, relabel_train
from .registry import (UnknownDatasetError, add_dataset_args, dataset_from_args, default_cache_dir, get_dataset,
                       list_datasets, reader_options, register_dataset)
from .datasets import read_cuhk03np, read_dukemtmc, read_market1501, read_msmt17, read_prid2011
from .synthetic_dataset import generate_synthetic, read_synthetic
from .pose import (FLIP_PERMUTATION, LEFT_RIGHT_PAIRS, OPENPOSE_18, flip_heatmaps, flip_keypoints,
                   keypoints_to_heatmaps, read_fdgan_pose, read_fdgan_poses, read_keypoints_csv, scale_keypoints,
                   write_keypoints_csv)
from .masks import MaskNotFoundError, MaskReader, decode_mask
from .samplers import (BatchedSampler, IdentityBalancedBatchSampler, SameIdentityPairSampler, ShuffledBatchSampler,
                       UnpairedDomainSampler, VerificationPairSampler)
from .loader import (PATH_ERRORS, DomainPairDataset, ImageDataset, check_image_headers, decode_image, error_message,
                     make_loader)
from .transforms import (IMAGENET_MEAN, IMAGENET_STD, Augmented, BatchAugment, RandomResizedRectCrop, denormalize,
                         normalize, to_float)

__all__ = [
    "Sample", "ReidDataset", "DatasetNotFoundError", "DatasetFormatError", "relabel_train",
    "register_dataset", "get_dataset", "list_datasets", "add_dataset_args", "dataset_from_args", "reader_options",
    "UnknownDatasetError", "check_image_headers",
    "default_cache_dir",
    "read_market1501", "read_dukemtmc", "read_msmt17", "read_cuhk03np", "read_prid2011", "read_synthetic",
    "generate_synthetic",
    "OPENPOSE_18", "LEFT_RIGHT_PAIRS", "FLIP_PERMUTATION", "read_keypoints_csv", "write_keypoints_csv",
    "read_fdgan_pose", "read_fdgan_poses", "scale_keypoints", "keypoints_to_heatmaps", "flip_keypoints",
    "flip_heatmaps",
    "MaskReader", "MaskNotFoundError", "decode_mask",
    "BatchedSampler", "IdentityBalancedBatchSampler", "ShuffledBatchSampler", "SameIdentityPairSampler",
    "VerificationPairSampler", "UnpairedDomainSampler",
    "ImageDataset", "DomainPairDataset", "decode_image", "error_message", "make_loader", "PATH_ERRORS",
    "BatchAugment", "RandomResizedRectCrop", "Augmented", "normalize", "denormalize", "to_float", "IMAGENET_MEAN",
    "IMAGENET_STD",
]
