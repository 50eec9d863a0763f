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
