"""Carries torch.compile's compiled graphs from one GPU run to the next, as parts small enough for a file transfer.

A GPU machine here starts bare and is lent for minutes: DG-Net's compiled first step alone has outrun a
benchmark's time limit. Inductor writes each graph to its on-disk cache (TORCHINDUCTOR_CACHE_DIR) as soon as the
graph is compiled, so the graphs a run finished before its time ran out are there even when the run was killed.
`pack` archives the entries a later process needs to skip compiling them, and `unpack` puts them back on a fresh
machine, where torch.compile then loads instead of compiling each graph whose key matches (the same graph, torch,
Triton, device and Inductor settings; anything else is a miss and compiles as usual, never an error):
- fxgraph/: Inductor's compiled graphs, with the Triton kernels' binaries bundled in (torch's
  bundle_triton_into_fx_graph_cache, on by default since 2.7);
- aotautograd/: the forward/backward split, so that AOTAutograd's trace is skipped too.
The rest of the cache (kernel sources, Triton's intermediate files, the CPU's C++ builds) is made again from these.

    python scripts/inductor_cache.py pack CACHE_DIR OUT_DIR [--part-mib 15] [--max-mib 52]
    python scripts/inductor_cache.py unpack PARTS_DIR CACHE_DIR

pack writes OUT_DIR/inductor-cache.tgz.000, .001, ... (each at most --part-mib), or nothing when the archive would
exceed --max-mib (it says so and exits 0: a cache that does not fit costs a compile, not the run's results).
unpack joins PARTS_DIR's parts and extracts them into CACHE_DIR, adding to what is there.
"""
from __future__ import annotations

import argparse
import io
import sys
import tarfile
from pathlib import Path

SUBDIRS = ("fxgraph", "aotautograd")
PART_PREFIX = "inductor-cache.tgz."
MIB = 1 << 20


def archive(cache_dir: Path) -> tuple[bytes, int]:
    """The gzipped tar of cache_dir's reusable entries, and how many files it holds."""
    buffer, count = io.BytesIO(), 0
    with tarfile.open(fileobj=buffer, mode="w:gz", compresslevel=6) as tar:
        for sub in SUBDIRS:
            folder = cache_dir / sub
            if not folder.is_dir():
                continue
            for path in sorted(folder.rglob("*")):
                if path.is_file() and not path.is_symlink():
                    tar.add(path, arcname=str(path.relative_to(cache_dir)), recursive=False)
                    count += 1
    return buffer.getvalue(), count


def pack(cache_dir: Path, out_dir: Path, part_mib: float, max_mib: float) -> list[Path]:
    """Writes the archive's parts to out_dir and returns them; none if there is nothing to keep or it is too large."""
    if not cache_dir.is_dir():
        print(f"inductor cache: {cache_dir} does not exist; nothing to pack")
        return []
    data, count = archive(cache_dir)
    if count == 0:
        print(f"inductor cache: {cache_dir} holds no compiled graphs; nothing to pack")
        return []
    if len(data) > max_mib * MIB:
        print(f"inductor cache: {count} files, {len(data) / MIB:.1f} MiB compressed, over the {max_mib:g} MiB "
              f"allowed: not packed (the next run compiles them again)")
        return []
    out_dir.mkdir(parents=True, exist_ok=True)
    for stale in out_dir.glob(PART_PREFIX + "*"):
        stale.unlink()
    step = max(1, int(part_mib * MIB))
    parts = []
    for index, start in enumerate(range(0, len(data), step)):
        part = out_dir / f"{PART_PREFIX}{index:03d}"
        part.write_bytes(data[start:start + step])
        parts.append(part)
    print(f"inductor cache: {count} files, {len(data) / MIB:.1f} MiB compressed, in {len(parts)} part(s) under "
          f"{out_dir}")
    return parts


def unpack(parts_dir: Path, cache_dir: Path) -> int:
    """Extracts the parts in parts_dir into cache_dir; returns how many files it restored (0 when there are no
    parts). A damaged archive raises ValueError naming it."""
    parts = sorted(parts_dir.glob(PART_PREFIX + "*")) if parts_dir.is_dir() else []
    if not parts:
        print(f"inductor cache: no parts ({PART_PREFIX}NNN) in {parts_dir}; starting with an empty cache")
        return 0
    data = b"".join(p.read_bytes() for p in parts)
    cache_dir.mkdir(parents=True, exist_ok=True)
    try:
        with tarfile.open(fileobj=io.BytesIO(data), mode="r:gz") as tar:
            members = tar.getmembers()
            for member in members:
                name = Path(member.name)
                if (not member.isfile() or name.is_absolute() or ".." in name.parts
                        or name.parts[0] not in SUBDIRS):
                    raise ValueError(f"unexpected entry {member.name!r}")
            tar.extractall(cache_dir, members=members, filter="data")
    except (tarfile.TarError, OSError, EOFError, ValueError) as exc:
        raise ValueError(f"inductor cache: the parts in {parts_dir} do not form a readable archive "
                         f"({len(parts)} part(s), {len(data)} bytes): {exc}") from exc
    print(f"inductor cache: restored {len(members)} files from {len(parts)} part(s) into {cache_dir}")
    return len(members)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    commands = parser.add_subparsers(dest="command", required=True)
    p = commands.add_parser("pack", help="archive CACHE_DIR's compiled graphs into parts under OUT_DIR")
    p.add_argument("cache_dir", type=Path)
    p.add_argument("out_dir", type=Path)
    p.add_argument("--part-mib", type=float, default=15.0, help="largest part, MiB (default 15)")
    p.add_argument("--max-mib", type=float, default=52.0,
                   help="write nothing above this many MiB (default 52: what a device call can carry beside the "
                        "working tree and a stripped build)")
    u = commands.add_parser("unpack", help="extract the parts in PARTS_DIR into CACHE_DIR")
    u.add_argument("parts_dir", type=Path)
    u.add_argument("cache_dir", type=Path)
    args = parser.parse_args(argv)
    if args.command == "pack":
        for name in ("part_mib", "max_mib"):
            if not getattr(args, name) > 0:
                parser.error(f"--{name.replace('_', '-')} must be positive, got {getattr(args, name)}")
        pack(args.cache_dir, args.out_dir, args.part_mib, args.max_mib)
        return 0
    try:
        unpack(args.parts_dir, args.cache_dir)
    except ValueError as exc:
        print(exc, file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
