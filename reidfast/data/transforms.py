"""Training augmentation done on the device, on whole (B, C, H, W) batches, with a torch.Generator.

Random horizontal flip, padding (zeros, or the edge pixels repeated) + random crop back to the input size,
normalization, random erasing: the usual re-id recipe, with per-sample random parameters drawn as tensors and
applied with one gather and a few broadcast comparisons instead of a Python loop over samples. Erasing follows
torchvision's RandomErasing: it acts on the normalized image, draws the rectangle's area fraction and log aspect
ratio uniformly (or the ratio itself, erase_ratio_scale="linear", as the original random erasing), and tries up
to 10 draws per sample for one that fits; it fills with a value, noise, or one random colour per image.
"""
from __future__ import annotations

import math
from typing import NamedTuple, Sequence

import torch

from .pose import FLIP_PERMUTATION, missing_mask

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
ERASE_ATTEMPTS = 10  # rectangles tried per image before giving up (torchvision's RandomErasing)


def to_float(images: torch.Tensor) -> torch.Tensor:
    """uint8 images -> float32 in [0, 1]; floating images are returned as they are."""
    return images.float().div_(255) if images.dtype == torch.uint8 else images


def channel_values(values, like: torch.Tensor) -> torch.Tensor:
    """`values` (a number, or one per channel) as a (1, C, 1, 1) tensor of like's dtype on like's device.

    The copy to a GPU does not wait: ``torch.as_tensor(values, device="cuda")`` copies from pageable memory with a
    stream synchronization, making the host wait for every queued kernel in each training step that normalizes.
    Here the values go through pinned memory, from which CUDA copies asynchronously (the caching host allocator
    keeps the block until the copy is done).
    """
    if like.device.type != "cuda" or torch.compiler.is_compiling():  # traced: a constant of the graph
        return torch.as_tensor(values, dtype=like.dtype, device=like.device).reshape(1, -1, 1, 1)
    t = torch.as_tensor(values, dtype=like.dtype).pin_memory()
    return t.to(like.device, non_blocking=True).reshape(1, -1, 1, 1)


def normalize(images: torch.Tensor, mean=IMAGENET_MEAN, std=IMAGENET_STD) -> torch.Tensor:
    """(x - mean) / std per channel; uint8 input is first scaled to [0, 1]."""
    images = to_float(images)
    return (images - channel_values(mean, images)) / channel_values(std, images)


def denormalize(images: torch.Tensor, mean=IMAGENET_MEAN, std=IMAGENET_STD, clamp: bool = True) -> torch.Tensor:
    """The inverse of :func:`normalize`, clamped to [0, 1] as sample grids and SSIM need (``clamp=False``: the
    exact inverse, for arithmetic such as FD-GAN's range conversion)."""
    images = images * channel_values(std, images) + channel_values(mean, images)
    return images.clamp(0, 1) if clamp else images


def _first_fit(fits: torch.Tensor, h: torch.Tensor, w: torch.Tensor):
    """(h, w, found), each (B, 1): the sizes of each row's first attempt whose box fits (as torchvision's loops take
    it) from (B, attempts) tensors, and whether any did (where none did, h and w are the first attempt's)."""
    first = fits.long().argmax(1, keepdim=True)
    return h.gather(1, first), w.gather(1, first), fits.any(1, keepdim=True)


class Augmented(NamedTuple):
    images: torch.Tensor          # (B, C, H, W) float, normalized
    aligned: list[torch.Tensor]   # the extra tensors, flipped and cropped like the images
    flipped: torch.Tensor         # (B,) bool
    offsets: torch.Tensor         # (B, 2) int64 crop offsets (x, y) in the padded image


class BatchAugment:
    """Flip, pad + random crop, normalize, random erasing for a (B, C, H, W) batch (uint8 or float in [0, 1]).

    ``augment(images, generator)`` returns the augmented batch; ``augment.apply(images, aligned, generator)``
    also transforms tensors that must stay aligned with the images (masks: same flip and crop, no erasing) and
    returns the per-sample flip and crop, which :meth:`transform_keypoints` applies to keypoints.
    Random numbers come from `generator` (on any device; one on the images' device avoids copies).
    """

    def __init__(self, flip_p: float = 0.5, pad: int = 10, erase_p: float = 0.5,
                 erase_area: tuple[float, float] = (0.02, 0.4), erase_ratio: tuple[float, float] = (0.3, 3.3),
                 erase_value: float | Sequence[float] | str = 0.0, mean=IMAGENET_MEAN, std=IMAGENET_STD,
                 pad_mode: str = "zeros", erase_ratio_scale: str = "log"):
        for name, p in (("flip_p", flip_p), ("erase_p", erase_p)):
            if not 0.0 <= p <= 1.0:
                raise ValueError(f"BatchAugment: {name} must be in [0, 1], got {p}")
        if pad < 0:
            raise ValueError(f"BatchAugment: pad must be >= 0, got {pad}")
        if pad_mode not in ("zeros", "edge"):
            raise ValueError(f"BatchAugment: pad_mode must be 'zeros' or 'edge', got {pad_mode!r}")
        if not (0 < erase_area[0] <= erase_area[1] <= 1 and 0 < erase_ratio[0] <= erase_ratio[1]):
            raise ValueError(f"BatchAugment: erase_area must satisfy 0 < lo <= hi <= 1 and erase_ratio 0 < lo <= hi; "
                             f"got {erase_area} and {erase_ratio}")
        if isinstance(erase_value, str) and erase_value not in ("random", "colour"):
            raise ValueError(f"BatchAugment: erase_value must be a number, per-channel numbers, 'random' or "
                             f"'colour', got {erase_value!r}")
        if erase_ratio_scale not in ("log", "linear"):
            raise ValueError(f"BatchAugment: erase_ratio_scale must be 'log' or 'linear', got {erase_ratio_scale!r}")
        self.flip_p, self.pad, self.erase_p, self.pad_mode = flip_p, pad, erase_p, pad_mode
        self.erase_area, self.erase_ratio, self.erase_value = erase_area, erase_ratio, erase_value
        self.erase_ratio_scale = erase_ratio_scale
        self.mean, self.std = mean, std
        # mean 0 and std 1 (DG-Net's erasing of images already normalized): normalization is the identity
        self._normalizes = bool((torch.as_tensor(mean, dtype=torch.float64) != 0).any()
                                or (torch.as_tensor(std, dtype=torch.float64) != 1).any())

    def __call__(self, images: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        return self.apply(images, generator=generator).images

    def _rand(self, shape, generator, device):
        rng_device = generator.device if generator is not None else device
        return torch.rand(shape, generator=generator, device=rng_device).to(device)

    def apply(self, images: torch.Tensor, aligned: Sequence[torch.Tensor] = (),
              generator: torch.Generator | None = None) -> Augmented:
        if images.dim() != 4:
            raise ValueError(f"BatchAugment: images must be (B, C, H, W), got {tuple(images.shape)}")
        batch, _, height, width = images.shape
        for t in aligned:
            if t.dim() != 4 or t.shape[0] != batch or t.shape[-2:] != images.shape[-2:]:
                raise ValueError(f"BatchAugment: aligned tensors must be (B, *, H, W) = ({batch}, *, {height}, "
                                 f"{width}); got {tuple(t.shape)}")
        device = images.device
        flipped = self._rand(batch, generator, device) < self.flip_p
        offsets = (self._rand((batch, 2), generator, device) * (2 * self.pad + 1)).long().clamp_(max=2 * self.pad)
        # An augmentation that only erases (DG-Net's on images already normalized) skips the identity crop and
        # normalization (the random draws above still happen: the same random stream either way).
        moves = bool(self.flip_p or self.pad)
        index = self._gather_index(flipped, offsets, height, width) if moves else None
        out = to_float(images)
        if moves:
            out = self._flip_crop(out, index)
        if self._normalizes:
            out = normalize(out, self.mean, self.std)
        out = self._erase(out, generator)
        if out is images:
            out = images.clone()
        elif not images.is_contiguous() and images.is_contiguous(memory_format=torch.channels_last):
            # channels_last in, channels_last out: the networks' layout on a GPU, so no conversion before their
            # first convolution and, under torch.compile, no second graph for the other layout
            out = out.contiguous(memory_format=torch.channels_last)
        aligned_out = [self._flip_crop(t, index) if moves else t.clone() for t in aligned]
        return Augmented(out, aligned_out, flipped, offsets)

    def _gather_index(self, flipped, offsets, height, width):
        """Flat index of every output pixel: flip, then crop at the offset in the padded image. Zero padding
        indexes the padded image; edge padding the image itself, the padded frame's pixel being the nearest
        image pixel (no padded copy, and any dtype)."""
        padded_w = width + 2 * self.pad
        cols = torch.arange(width, device=flipped.device).unsqueeze(0) + offsets[:, :1]        # (B, W)
        cols = torch.where(flipped.unsqueeze(1), padded_w - 1 - cols, cols)
        rows = torch.arange(height, device=flipped.device).unsqueeze(0) + offsets[:, 1:]        # (B, H)
        if self.pad_mode == "edge":
            cols, rows = (cols - self.pad).clamp(0, width - 1), (rows - self.pad).clamp(0, height - 1)
            padded_w = width
        return (rows.unsqueeze(2) * padded_w + cols.unsqueeze(1)).flatten(1)                    # (B, H*W)

    def _flip_crop(self, tensor, index):
        batch, channels, height, width = tensor.shape
        zeros = self.pad and self.pad_mode == "zeros"
        padded = torch.nn.functional.pad(tensor, (self.pad,) * 4) if zeros else tensor
        flat = padded.flatten(2)
        out = flat.gather(2, index.unsqueeze(1).expand(batch, channels, -1))
        return out.view(batch, channels, height, width)

    def _erase(self, images, generator):
        if self.erase_p == 0:
            return images
        draws = self.erase_draws(images.shape[0], generator, images.device)
        if not isinstance(self.erase_value, str):
            return self.erase_with(images, draws)
        rng_device = generator.device if generator is not None else images.device
        if self.erase_value == "colour":
            # one colour per image, each channel a uniform integer 0-255, normalized as the image (FD-GAN's eraser)
            colour = torch.randint(0, 256, (images.shape[0], images.shape[1], 1, 1), generator=generator,
                                   device=rng_device).to(images.device, images.dtype) / 255
            if self._normalizes:
                colour = normalize(colour, self.mean, self.std)
            return torch.where(self._erase_region(images, draws), colour, images)
        # "random": standard normal noise, as torchvision's value="random" (drawn after the rectangles)
        noise = torch.randn(images.shape, generator=generator, device=rng_device, dtype=images.dtype).to(images.device)
        return torch.where(self._erase_region(images, draws), noise, images)

    def erase_draws(self, batch: int, generator: torch.Generator | None = None,
                    device: torch.device | str | None = None) -> torch.Tensor:
        """The uniform random numbers that random erasing of `batch` images takes, as one (batch, 23) tensor on
        `device`: the area and aspect-ratio draws of the 10 attempts, whether to erase, the top and left edge.
        :meth:`erase_with` applies them: drawing apart from applying lets a compiled training step erase (a graph
        cannot take a generator). The same draws, in the same order, as the augmentation's own erasing."""
        device = torch.device("cpu") if device is None else torch.device(device)
        parts = [self._rand((batch, ERASE_ATTEMPTS), generator, device) for _ in range(2)]
        parts += [self._rand((batch, 1), generator, device) for _ in range(3)]
        return torch.cat(parts, 1)

    def erase_with(self, images: torch.Tensor, draws: torch.Tensor) -> torch.Tensor:
        """Random erasing of (B, C, H, W) `images` by :meth:`erase_draws`' (B, 23) `draws`, with the erase value
        (a number or one per channel; "random" noise needs a generator: use the augmentation itself)."""
        if isinstance(self.erase_value, str):
            raise ValueError(f"BatchAugment.erase_with: erase_value={self.erase_value!r} draws from a generator; "
                             "call the augmentation instead")
        if self.erase_p == 0:
            return images
        return torch.where(self._erase_region(images, draws), channel_values(self.erase_value, images), images)

    def _erase_region(self, images: torch.Tensor, draws: torch.Tensor) -> torch.Tensor:
        """(B, 1, H, W) bool: the rectangle each image's draws pick (torchvision's RandomErasing: the first of
        the attempts whose rectangle fits; none if none fits or the erase draw fails erase_p)."""
        if images.dim() != 4:
            raise ValueError(f"BatchAugment: images must be (B, C, H, W), got {tuple(images.shape)}")
        batch, _, height, width = images.shape
        if draws.shape != (batch, 2 * ERASE_ATTEMPTS + 3):
            raise ValueError(f"BatchAugment: erase draws must be ({batch}, {2 * ERASE_ATTEMPTS + 3}) for "
                             f"{batch} images (erase_draws), got {tuple(draws.shape)}")
        u_area, u_ratio, u_apply, u_top, u_left = draws.split([ERASE_ATTEMPTS, ERASE_ATTEMPTS, 1, 1, 1], 1)
        area = height * width * (self.erase_area[0] + (self.erase_area[1] - self.erase_area[0]) * u_area)
        if self.erase_ratio_scale == "log":  # torchvision's: uniform in log(ratio), as likely wide as tall
            log_lo, log_hi = math.log(self.erase_ratio[0]), math.log(self.erase_ratio[1])
            ratio = torch.exp(log_lo + (log_hi - log_lo) * u_ratio)
        else:  # uniform in the ratio itself (the original random erasing's and FD-GAN's): mostly tall rectangles
            ratio = self.erase_ratio[0] + (self.erase_ratio[1] - self.erase_ratio[0]) * u_ratio
        h = torch.sqrt(area * ratio).round().long()
        w = torch.sqrt(area / ratio).round().long()
        fits = (h < height) & (w < width) & (h > 0) & (w > 0)
        h, w, found = _first_fit(fits, h, w)
        apply = found & (u_apply < self.erase_p)
        top = (u_top * (height - h + 1)).long()
        left = (u_left * (width - w + 1)).long()
        rows = torch.arange(height, device=images.device).view(1, -1, 1)
        cols = torch.arange(width, device=images.device).view(1, 1, -1)
        top, left, h, w, apply = (t.view(-1, 1, 1) for t in (top, left, h, w, apply))
        region = (rows >= top) & (rows < top + h) & (cols >= left) & (cols < left + w) & apply
        return region.unsqueeze(1)

    def transform_keypoints(self, keypoints: torch.Tensor, result: Augmented, width: int,
                            swap_left_right: bool = True) -> torch.Tensor:
        """Apply `result`'s flip and crop to (B, 18, 2) (x, y) keypoints of images `width` pixels wide.

        Points cropped out of the image become missing (-1). With ``swap_left_right`` a flipped sample's
        left/right keypoints trade places (see :func:`reidfast.data.pose.flip_keypoints`).
        """
        kp = keypoints.clone()
        missing = missing_mask(keypoints)
        flipped = result.flipped.view(-1, 1).to(kp.device)
        kp[..., 0] = torch.where(flipped, (width - 1) - kp[..., 0], kp[..., 0])
        if swap_left_right:
            kp = torch.where(flipped.unsqueeze(-1), kp[:, list(FLIP_PERMUTATION)], kp)
            missing = torch.where(flipped, missing[:, list(FLIP_PERMUTATION)], missing)
        # the crop window starts at `offset` in the padded image, i.e. at offset - pad in the image
        shift = (result.offsets.to(kp) - self.pad).unsqueeze(1)
        kp = kp - shift
        height = None if result.images is None else result.images.shape[-2]
        outside = (kp[..., 0] < 0) | (kp[..., 0] > width - 1) | (kp[..., 1] < 0)
        if height is not None:
            outside |= kp[..., 1] > height - 1
        return torch.where((missing | outside).unsqueeze(-1), torch.full_like(kp, -1.0), kp)


class RandomResizedRectCrop:
    """A random box of each image, resized back to the image's size (FD-GAN's stage I crop, its
    RandomSizedRectCrop): up to 10 draws per image of a box of area U(area) of the image and aspect ratio
    height / width U(ratio); the first that fits is cut out and resized bilinearly (pixel centres aligned, as an
    image resize); an image none of whose draws fits stays whole. ``crop(images, generator)`` takes a (B, C, H, W)
    batch (uint8 or float in [0, 1]) and returns floats."""

    ATTEMPTS = 10

    def __init__(self, area: tuple[float, float] = (0.64, 1.0), ratio: tuple[float, float] = (2.0, 3.0)):
        if not (0 < area[0] <= area[1] <= 1 and 0 < ratio[0] <= ratio[1]):
            raise ValueError(f"RandomResizedRectCrop: area must satisfy 0 < lo <= hi <= 1 and ratio 0 < lo <= hi; "
                             f"got {area} and {ratio}")
        self.area, self.ratio = area, ratio

    def __call__(self, images: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        if images.dim() != 4:
            raise ValueError(f"RandomResizedRectCrop: images must be (B, C, H, W), got {tuple(images.shape)}")
        batch, _, height, width = images.shape
        rng_device = generator.device if generator is not None else images.device
        u = torch.rand((batch, 2 * self.ATTEMPTS + 2), generator=generator, device=rng_device)
        u = u.to(images.device, torch.float64)
        u_area, u_ratio, u_x, u_y = u.split([self.ATTEMPTS, self.ATTEMPTS, 1, 1], 1)
        area = height * width * (self.area[0] + (self.area[1] - self.area[0]) * u_area)
        ratio = self.ratio[0] + (self.ratio[1] - self.ratio[0]) * u_ratio
        h, w = torch.sqrt(area * ratio).round(), torch.sqrt(area / ratio).round()
        fits = (h <= height) & (w <= width)
        h, w, found = _first_fit(fits, h, w)
        h = torch.where(found, h, torch.full_like(found, height, dtype=h.dtype))
        w = torch.where(found, w, torch.full_like(found, width, dtype=w.dtype))
        left, top = (u_x * (width - w + 1)).floor(), (u_y * (height - h + 1)).floor()
        # the box [left, left + w) x [top, top + h) in normalized coordinates (align_corners=False: -1 and 1 are
        # the image's outer edges) onto the whole output
        theta = torch.zeros(batch, 2, 3, dtype=torch.float64, device=images.device)
        theta[:, 0, 0], theta[:, 1, 1] = (w / width).squeeze(1), (h / height).squeeze(1)
        theta[:, 0, 2] = ((2 * left + w) / width - 1).squeeze(1)
        theta[:, 1, 2] = ((2 * top + h) / height - 1).squeeze(1)
        x = to_float(images)
        grid = torch.nn.functional.affine_grid(theta.to(x.dtype), list(x.shape), align_corners=False)
        return torch.nn.functional.grid_sample(x, grid, mode="bilinear", padding_mode="border", align_corners=False)
