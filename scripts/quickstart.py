"""Prints a command line of the README's Quick start block (so CI runs exactly what the README tells users)."""
import argparse
import pathlib
import re

ROOT = pathlib.Path(__file__).resolve().parent.parent


def quickstart_lines(readme: str) -> list[str]:
    heading = re.search(r"^#+ .*quick ?start.*$", readme, re.I | re.M)
    if heading is None:
        raise SystemExit("README.md has no 'Quick start' heading")
    block = re.search(r"```[^\n]*\n(.*?)```", readme[heading.end():], re.S)
    if block is None:
        raise SystemExit("README.md: no fenced block under 'Quick start'")
    lines, current = [], ""
    for raw in block.group(1).splitlines():
        line = raw.strip().removeprefix("$ ")
        if not line or line.startswith("#"):
            continue
        if line.endswith("\\"):
            current += line[:-1] + " "
            continue
        lines.append(current + line)
        current = ""
    return lines


def main():
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--line", type=int, required=True, help="1: set up and run the main job; 2: run the tests")
    args = p.parse_args()
    lines = quickstart_lines((ROOT / "README.md").read_text(encoding="utf-8"))
    if not 1 <= args.line <= len(lines):
        raise SystemExit(f"README Quick start has {len(lines)} command lines, asked for line {args.line}")
    print(lines[args.line - 1])


if __name__ == "__main__":
    main()
