"""adapt --image to the target domain under --codes spatial codes (SA-GAN's S1 then G1)

For each image one PNG grid of three rows: the input; M spatially adapted images S1(x, z_k); M fully adapted
images G1(S1(x, z_k)); one column per spatial code z_k ~ N(0, I) (--seed fixes them). The grid is named
<stem>_sagan_<M>codes.png after its image (<stem>_<i>_sagan_... for the i-th --image, counted from 0, when two
share a stem). Without --mask the whole box counts as the person. --checkpoint takes the run folder (RUN, whose
stages.json names the adaptation stage), the adaptation stage's folder (RUN/adapt) or one of its checkpoint files.
"""
from __future__ import annotations

from pathlib import Path

import torch

from ..data import decode_mask
from ..train.images import save_image_grid
from .common import load_images, output_stems

# One grid column per code: beyond a few hundred the picture is no longer a picture, and every image's M adapted
# copies are made at once (100000 codes ran out of memory).
MAX_CODES = 256


def add_arguments(parser) -> None:
    parser.add_argument("--image", nargs="+", required=True, metavar="IMG", help="source-domain image file(s)")
    parser.add_argument("--mask", nargs="+", default=None, metavar="PNG",
                        help="binary human mask per image, in the order of --image (default: all foreground)")
    parser.add_argument("--codes", type=int, default=4, metavar="M",
                        help=f"spatial codes per image, one grid column each (default 4, at most {MAX_CODES})")
    parser.add_argument("--seed", type=int, default=0, help="seed of the spatial codes (default 0)")


def _masks(paths, count: int, size, device) -> torch.Tensor:
    if paths is None:
        return torch.ones(count, 1, *size, device=device)
    if len(paths) != count:
        raise ValueError(f"--mask: give one mask per --image ({count}), got {len(paths)}")
    masks = []
    for path in paths:
        if not Path(path).is_file():
            raise ValueError(f"--mask: {path} is not a file")
        try:
            masks.append(torch.from_numpy(decode_mask(path, size)))
        except Exception as exc:  # PIL's errors vary by format; the user needs the file name
            raise ValueError(f"--mask: cannot read {path} as an image ({exc})") from exc
    return torch.stack(masks).unsqueeze(1).float().to(device)


def generate(method, cfg: dict, args, out: Path, device: torch.device) -> list[Path]:
    from ..train.sagan import AdaptStage, _adapt_method
    if not 1 <= args.codes <= MAX_CODES:
        raise ValueError(f"--codes must be between 1 and {MAX_CODES} (one grid column per code), got {args.codes}")
    if not isinstance(method, AdaptStage):  # the run folder's checkpoint is the re-id stage's: find the adapt stage
        run_dir = Path(args.checkpoint)
        run_dir = run_dir if run_dir.is_dir() else run_dir.parent
        folder = Path(cfg["run_folder"]) if cfg.get("run_folder") else run_dir
        if not (folder / "adapt").is_dir():
            folder = run_dir
        if not (folder / "adapt").is_dir():
            raise ValueError(f"--checkpoint: {args.checkpoint} holds no SA-GAN adaptation stage (RUN/adapt); "
                             f"this run trained only the re-id stage")
        method, cfg = _adapt_method(folder / "adapt", device)
    size = (cfg["height"], cfg["width"])
    images = load_images(args.image, size, device, "--image", method.resize_filter)
    masks = _masks(args.mask, images.shape[0], size, device)
    g = torch.Generator(device=device).manual_seed(args.seed)
    codes = torch.randn(images.shape[0], args.codes, method.code_dim, generator=g, device=device)
    spatial, adapted = method.adapt(images, masks, codes)
    written = []
    for i, stem in enumerate(output_stems(args.image)):
        rows = [images[i:i + 1].float(), spatial[i], adapted[i]]
        columns = args.codes
        grid = torch.cat([torch.cat([r, r.new_zeros((columns - r.shape[0],) + r.shape[1:])]) if r.shape[0] < columns
                          else r for r in rows])
        written.append(save_image_grid(grid, Path(out) / f"{stem}_sagan_{args.codes}codes.png",
                                       nrow=columns))
    return written
