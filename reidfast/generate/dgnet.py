"""DG-Net: swap appearance and structure codes between any images; measure generation quality.

  python -m reidfast.generate dgnet --checkpoint RUN_DIR --appearance A1.jpg A2.jpg --structure S1.jpg S2.jpg S3.jpg
  python -m reidfast.generate dgnet --checkpoint RUN_DIR --quality [--fid-weights inception-2015-12-05.pt]

Swapping writes swap_grid.png (first row: the structure images; first column: the appearance images; cell
(i, j): appearance i in structure j) and each generated image as a{i}_s{j}.png.
--quality generates images from the run's test images (appearance of one image, structure of another) and
writes quality.json: the Frechet distance of generated vs real images (FID when --fid-weights gives the
standard Inception network as TorchScript; otherwise the run's own appearance encoder's features, labelled as
not comparable with published FID) and SSIM diversity (mean SSIM between images generated from one appearance
in different structures, lower = more diverse, next to the same statistic for real same-identity images).
"""
from __future__ import annotations

import json
from pathlib import Path

import torch

from ..data import ImageDataset, denormalize, normalize
from ..eval.image_quality import TorchScriptFeatures, generated_image_quality, mean_pairwise_ssim
from ..train.images import save_image_grid
from .common import load_images


def add_arguments(parser) -> None:
    parser.add_argument("--appearance", nargs="+", metavar="IMG", default=None,
                        help="images whose appearance (clothing, colours) is kept along a row")
    parser.add_argument("--structure", nargs="+", metavar="IMG", default=None,
                        help="images whose structure (pose, background) is kept along a column")
    parser.add_argument("--quality", action="store_true",
                        help="measure Frechet distance and SSIM diversity on the run's test images")
    parser.add_argument("--num-images", type=int, default=500, metavar="N",
                        help="generated images for the Frechet distance (500; papers use ~10k+ for FID)")
    parser.add_argument("--fid-weights", metavar="PATH", default=None,
                        help="the standard FID Inception network as a TorchScript file (inception-2015-12-05.pt); "
                             "without it the run's appearance encoder gives a non-comparable distance")
    parser.add_argument("--seed", type=int, default=0, help="which test images --quality draws (0)")


def swap(method, appearance: torch.Tensor, structure: torch.Tensor, out: Path) -> list[Path]:
    grid = method.swap_codes(appearance, structure)  # (Na, Ns, 3, H, W)
    na, ns = grid.shape[:2]
    blank = torch.zeros_like(structure[:1])
    rows = [torch.cat([blank, structure])] + [torch.cat([appearance[i:i + 1], grid[i]]) for i in range(na)]
    written = [save_image_grid(torch.cat(rows).float(), out / "swap_grid.png", nrow=ns + 1)]
    for i in range(na):
        for j in range(ns):
            written.append(save_image_grid(grid[i, j:j + 1], out / f"a{i}_s{j}.png", nrow=1, padding=0))
    return written


def quality(method, cfg: dict, args, out: Path, device: torch.device) -> list[Path]:
    if args.num_images < 2:
        raise ValueError(f"--num-images: need at least 2, got {args.num_images}")
    dataset = type(method).load_dataset(cfg)
    samples = list(dataset.query) + list(dataset.gallery)
    items = ImageDataset(samples, size=(cfg["height"], cfg["width"]), resize_filter=method.resize_filter)
    rng = torch.Generator().manual_seed(args.seed)

    def load(indices) -> torch.Tensor:
        return normalize(torch.stack([items[int(i)]["image"] for i in indices]).to(device))

    def pairs(n):  # real images, and images generated with the appearance of one and the structure of another
        real = load(torch.randint(len(samples), (n,), generator=rng))
        structure = load(torch.randint(len(samples), (n,), generator=rng))
        with torch.no_grad(), method.run.autocast():  # the networks are in eval mode (load_trained_method)
            fake = method.gen.decode(method.gen.encode(structure), method.ea.appearance(real)).float()
        return real, fake

    if args.fid_weights:
        features = TorchScriptFeatures(args.fid_weights, device)
        label = features.label
    else:
        def features(images):
            with torch.no_grad(), method.run.autocast():
                return method.ea.appearance(images).float()
        label = "reidfast appearance encoder of this run: NOT comparable with published FID"
    result = generated_image_quality(pairs, features, args.num_images)

    # SSIM diversity: groups of K images, one appearance in K structures; real: K images of one identity
    k, groups = 4, 16
    by_pid: dict[int, list[int]] = {}
    for index, s in enumerate(samples):
        by_pid.setdefault(s.pid, []).append(index)
    identities = [v for v in by_pid.values() if len(v) >= k]
    real_groups = [load(v[:k]) for v in identities[:groups]]
    fake_groups = []
    for _ in range(groups):
        appearance = load(torch.randint(len(samples), (1,), generator=rng))
        structure = load(torch.randint(len(samples), (k,), generator=rng))
        fake_groups.append(method.swap_codes(appearance, structure)[0])
    report = {
        "frechet_distance": result["frechet_distance"], "feature_network": label, "num_images": args.num_images,
        # SSIM on [0, 1] images (denormalize clamps to that range)
        "ssim_generated": mean_pairwise_ssim(torch.stack([denormalize(g.float()) for g in fake_groups])),
        "ssim_real_same_identity": (mean_pairwise_ssim(torch.stack([denormalize(g.float()) for g in real_groups]))
                                    if real_groups else None),
        "ssim_convention": f"mean SSIM over pairs within groups of {k}: generated = one appearance in {k} "
                           f"structures, real = {k} images of one identity; lower = more diverse",
        "image_size": [cfg["height"], cfg["width"]],
    }
    out.mkdir(parents=True, exist_ok=True)
    path = out / "quality.json"
    path.write_text(json.dumps(report, indent=2) + "\n")
    real = report["ssim_real_same_identity"]
    print(f"Frechet distance {report['frechet_distance']:.2f} ({label}); SSIM generated "
          f"{report['ssim_generated']:.3f}, real same-identity {'n/a' if real is None else f'{real:.3f}'}")
    return [path]


def generate(method, cfg: dict, args, out: Path, device: torch.device) -> list[Path]:
    if (args.appearance is None) != (args.structure is None):
        raise ValueError("--appearance and --structure go together (give both lists of images)")
    if args.appearance is None and not args.quality:
        raise ValueError("nothing to do: give --appearance IMG... --structure IMG..., or --quality")
    written = []
    if args.appearance is not None:
        size = (cfg["height"], cfg["width"])
        appearance = load_images(args.appearance, size, device, "--appearance", method.resize_filter)
        structure = load_images(args.structure, size, device, "--structure", method.resize_filter)
        written += swap(method, appearance, structure, out)
    if args.quality:
        written += quality(method, cfg, args, out, device)
    return written
