"""One progress helper for every long loop: a tqdm bar on a TTY, silent otherwise."""
from __future__ import annotations

import os
import sys
from typing import Iterable, TypeVar

T = TypeVar("T")


def progress(iterable: Iterable[T], desc: str, total: int | None = None, leave: bool = False) -> Iterable[T]:
    from tqdm.auto import tqdm

    disable = not sys.stderr.isatty() or os.environ.get("NNSLIM_PROGRESS", "1") == "0"
    return tqdm(iterable, desc=desc, total=total, leave=leave, disable=disable, dynamic_ncols=True)


def warn(message: str) -> None:
    """A one-line note on stderr for something the user should know (never for errors)."""
    print(f"note: {message}", file=sys.stderr)


def stage(message: str) -> None:
    """A plain stage line on stderr for long work when no progress bar is shown (not a TTY)."""
    if os.environ.get("NNSLIM_PROGRESS", "1") != "0" and not sys.stderr.isatty():
        print(f"[nnslim] {message}", file=sys.stderr, flush=True)
