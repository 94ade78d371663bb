"""Name -> dataset reader registry, the shared --dataset/--data-root arguments, and the synthetic fallback.

A reader is any callable ``reader(root, **options) -> ReidDataset``. Adding a dataset takes a few lines::

    from reidfast.data import register_dataset, ReidDataset, Sample

    @register_dataset("mydata")
    def read_mydata(root, **options) -> ReidDataset:
        ...

after which ``get_dataset("mydata", root)`` and ``--dataset mydata`` work everywhere.
"""
from __future__ import annotations

import argparse
import logging
import os
from pathlib import Path
from typing import Callable

from .base import ReidDataset

log = logging.getLogger(__name__)

Reader = Callable[..., ReidDataset]
_READERS: dict[str, Reader] = {}
_ALIASES: dict[str, str] = {}

SYNTHETIC = "synthetic"


class UnknownDatasetError(ValueError):
    """A dataset name that no reader is registered under."""


def _key(name: str) -> str:
    return name.strip().lower().replace("_", "-")


def register_dataset(name: str, *aliases: str) -> Callable[[Reader], Reader]:
    """Decorator registering `reader` under `name` (and optional aliases); names are case-insensitive."""

    def decorate(reader: Reader) -> Reader:
        if not callable(reader):
            raise TypeError(f"register_dataset({name!r}): expected a callable reader, got {type(reader).__name__}")
        for n in (name, *aliases):
            key = _key(n)
            owner = _READERS.get(key) or _READERS.get(_ALIASES.get(key, ""))
            if owner is not None and owner is not reader:
                raise ValueError(f"register_dataset: the name {n!r} is already registered to {owner!r}")
        _READERS[_key(name)] = reader
        for alias in aliases:
            _ALIASES[_key(alias)] = _key(name)
        return reader

    return decorate


def _ensure_builtin_readers() -> None:
    from . import datasets, synthetic_dataset  # noqa: F401  (importing registers the built-in readers)


def list_datasets() -> list[str]:
    """Registered dataset names (aliases not included), sorted."""
    _ensure_builtin_readers()
    return sorted(_READERS)


def default_cache_dir() -> Path:
    """$REIDFAST_CACHE, else $XDG_CACHE_HOME/reidfast, else ~/.cache/reidfast."""
    if os.environ.get("REIDFAST_CACHE"):
        return Path(os.environ["REIDFAST_CACHE"]).expanduser()
    if os.environ.get("XDG_CACHE_HOME"):
        return Path(os.environ["XDG_CACHE_HOME"]).expanduser() / "reidfast"
    return Path.home() / ".cache" / "reidfast"


def get_dataset(name: str | None = None, root: str | os.PathLike | None = None, **options) -> ReidDataset:
    """Read dataset `name` from `root`.

    With neither a name nor a root (or name "synthetic" and no root) this returns the synthetic Market-format
    dataset, generated once into the user cache (see :func:`default_cache_dir`), so every command works on a
    fresh machine. A real dataset named without a root is an error rather than a silent switch to synthetic data.
    A root without a name reads it as Market-1501.
    """
    key = _reader_key(name, root)
    if root is None and key != SYNTHETIC:
        raise ValueError(
            f"get_dataset: dataset {name!r} needs a data root (--data-root DIR); "
            f"omit --dataset (or use --dataset {SYNTHETIC}) to use the bundled synthetic data"
        )
    return _READERS[key](root, **options)


def _reader_key(name: str | None, root) -> str:
    """The registry key of the reader that reads `name` from `root` (no name: the synthetic data, or Market-1501
    for a root alone)."""
    _ensure_builtin_readers()
    if name is None:
        name = SYNTHETIC if root is None else "market1501"
    key = _ALIASES.get(_key(name), _key(name))
    if key not in _READERS:
        raise UnknownDatasetError(f"get_dataset: unknown dataset {name!r}; registered: {', '.join(list_datasets())}")
    return key


def add_dataset_args(parser: argparse.ArgumentParser, group=None, default=None,
                     when_omitted: str = "market1501 when --data-root is given, else the synthetic data"
                     ) -> argparse.ArgumentParser:
    """Add ``--dataset NAME`` and ``--data-root DIR`` to a command's parser (in `group`, or a new "data" group);
    see :func:`dataset_from_args`. `default` is what an omitted flag leaves (argparse.SUPPRESS: nothing) and
    `when_omitted` says in the help what the command does then. Returns the parser."""
    group = group if group is not None else parser.add_argument_group("data")
    group.add_argument("--dataset", default=default, metavar="NAME",
                       help="dataset to read: " + ", ".join(list_datasets()) + f" (default: {when_omitted})")
    group.add_argument("--data-root", default=default, metavar="DIR",
                       help="folder holding the dataset (the dataset folder itself or its parent)")
    group.add_argument("--skip-misnamed", action="store_true", default=argparse.SUPPRESS if default is argparse.SUPPRESS
                       else False, help="skip (with a warning) images whose file names do not follow the dataset's "
                                        "naming, instead of stopping with an error")
    group.add_argument("--dataset-option", nargs="+", default=default, metavar="KEY=VALUE",
                       help="options of the dataset's reader: variant=labeled (cuhk03), version=V2 use_val=true "
                            "(msmt17), split_seed=3 num_train_ids=100 (prid)")
    return parser


def reader_options(skip_misnamed: bool, dataset_options=None, name: str | None = None, root=None) -> dict:
    """The reader keywords that --skip-misnamed and --dataset-option KEY=VALUE ... stand for, for dataset `name` read
    from `root` (none by default, so readers registered without a `strict` keyword keep working)."""
    options = {"strict": False} if skip_misnamed else {}
    if dataset_options:
        options.update(parse_dataset_options(name, dataset_options, root))
    return options


def _reader_parameters(reader: str) -> dict:
    """The keyword parameters of a registered reader that --dataset-option may set (all but root and strict)."""
    import inspect
    return {k: p for k, p in inspect.signature(_READERS[reader]).parameters.items() if k not in ("root", "strict")
            and p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)}


def reader_option_names(name: str | None, root=None) -> tuple[str, ...]:
    """The keywords --dataset-option may set for the reader that get_dataset(name, root) calls."""
    return tuple(_reader_parameters(_reader_key(name, root)))


def dataset_option_key(item) -> str:
    """The keyword a --dataset-option KEY=VALUE string sets."""
    return str(item).partition("=")[0].strip().replace("-", "_")


def parse_dataset_options(name: str | None, items, root=None) -> dict:
    """--dataset-option KEY=VALUE strings -> keywords of the reader that get_dataset(name, root) calls. Each value
    takes the type of the keyword's default (a bool, an int, else a string); a key the reader does not take is an
    error listing the ones it does."""
    reader = _reader_key(name, root)  # named in the errors by its registered name
    params = _reader_parameters(reader)
    options = {}
    for item in [items] if isinstance(items, str) else items:
        _, sep, text = str(item).partition("=")
        key = dataset_option_key(item)
        if not sep or not key:
            raise ValueError(f"--dataset-option {item!r}: expected KEY=VALUE")
        if key not in params:
            known = ", ".join(params) or "none"
            raise ValueError(f"--dataset-option {item}: the {reader} reader takes no option {key!r} (its options: "
                             f"{known})")
        default = params[key].default
        try:
            if isinstance(default, bool):
                if text.strip().lower() not in ("true", "false", "1", "0", "yes", "no"):
                    raise ValueError("expected true or false")
                options[key] = text.strip().lower() in ("true", "1", "yes")
            elif isinstance(default, int):
                options[key] = int(text)
            else:
                options[key] = text.strip()
        except ValueError as exc:
            raise ValueError(f"--dataset-option {item}: {exc}") from None
    return options


def dataset_from_args(args: argparse.Namespace, **options) -> ReidDataset:
    """Read the dataset chosen by the arguments :func:`add_dataset_args` added."""
    options = {**reader_options(getattr(args, "skip_misnamed", False), getattr(args, "dataset_option", None),
                                args.dataset, args.data_root), **options}
    return get_dataset(args.dataset, args.data_root, **options)
