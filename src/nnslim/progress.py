"""One progress helper for every long loop: a tqdm bar on a TTY, silent otherwise."""
from __future__ import annotations

import os
import sys
from typing import Iterable, TypeVar

T = TypeVar("T")


def progress(iterable: Iterable[T], desc: str, total: int | None = None, leave: bool = False) -> Iterable[T]:
    """A tqdm bar over `iterable`; each step is also a point where a dropped SIGTERM ends the run."""
    from tqdm.auto import tqdm

    from .errors import check_terminated

    class Bar(tqdm):
        def __iter__(self):
            for item in super().__iter__():
                check_terminated()
                yield item

    disable = not sys.stderr.isatty() or os.environ.get("NNSLIM_PROGRESS", "1") == "0"
    return Bar(iterable, desc=desc, total=total, leave=leave, disable=disable, dynamic_ncols=True)


_SAID: set[str] = set()


def warn(message: str, once: bool = False) -> None:
    """A one-line note on stderr for something the user should know (never for errors); once: not again in
    this process (a note about the data, met at every evaluation)."""
    if once:
        if message in _SAID:
            return
        _SAID.add(message)
    print(f"note: {message}", file=sys.stderr)


def stage(message: str) -> None:
    """A plain stage line on stderr for long work when no progress bar is shown (not a TTY); also the point
    where a SIGTERM that something caught and dropped ends the run."""
    from .errors import check_terminated

    check_terminated()
    if os.environ.get("NNSLIM_PROGRESS", "1") != "0" and not sys.stderr.isatty():
        print(f"[nnslim] {message}", file=sys.stderr, flush=True)


def memory_in_use(device=None) -> str:
    """'host 3.21 GB, cuda 5.02 GB': this process's resident memory and the device memory torch holds."""
    try:
        with open("/proc/self/status", encoding="ascii") as f:
            host = next(int(line.split()[1]) for line in f if line.startswith("VmRSS:")) / 2**20
        text = f"host {host:.2f} GB"
    except (OSError, StopIteration, ValueError):
        text = "host ? GB"
    if device is not None and getattr(device, "type", str(device)) == "cuda":
        import torch

        text += f", cuda {torch.cuda.memory_allocated(device) / 2**30:.2f} GB"
    return text


def step_done(bar, message: str, device=None) -> None:
    """After one step of a long loop (a decoder block): the memory in use on the bar, or a stage line."""
    line = memory_in_use(device)
    if getattr(bar, "disable", True):
        stage(f"{message}: {line}")
    else:
        bar.set_postfix_str(line, refresh=False)
