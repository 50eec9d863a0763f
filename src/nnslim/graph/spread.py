"""Layer-wise calibration spread over several devices (GPUs): data-parallel within each block.

The blocks still run in order (block i is calibrated on the outputs of the changed blocks before it),
but each block's work is split between the devices:

1. the calibration samples are dealt out to the devices once, after the first block's inputs are
   captured (sample j on device j mod D); every device holds a copy of the current block;
2. each device runs its copy on its samples, and its own BlockAlgorithm collects statistics
   (Hessians, input norms); the others' statistics are merged into the first one's (`merge`);
3. the target layers are dealt out to the devices (layers fed the same input stay together), each
   device finishes its share (GPTQ / SparseGPT solves) on its copy (`subset` moves the statistics);
4. the changed layers are gathered into the first copy, sent to the others again, and every device
   computes its samples' outputs: the next block's inputs.

Peak memory per device: one block plus 1/D of the calibration activations. The result equals the
one-device run up to float summation order (the statistics are summed in another order).
A BlockAlgorithm without `merge` cannot be spread (an error says so before any work).
"""
from __future__ import annotations

import copy
import time
from concurrent.futures import ThreadPoolExecutor
from contextlib import nullcontext
from typing import Any, Callable

import torch
from torch import nn

from ..errors import NnslimError
from ..progress import progress, step_done
from .layerwise import (BlockAlgorithm, Unseen, _as_float32, _to, block_stack, block_targets, call_block,
                        computes_in_float32, feed_block, float32_compute, take_unseen)
from .modules import replace_module


def check_spreadable(make: Callable[[], BlockAlgorithm], what: str) -> None:
    probe = make()
    inner = getattr(probe, "inner", probe)  # (a wrapper that counts, e.g. pruning's)
    if not hasattr(inner, "merge"):
        raise NnslimError(f"{what} cannot be spread over several GPUs yet (its statistics cannot be merged); "
                          "use gpus=1")
    why = getattr(inner, "not_spreadable", None)
    if why:
        raise NnslimError(f"{what} cannot be spread over several GPUs yet: {why}")


def _on(device: torch.device):
    return torch.cuda.device(device) if device.type == "cuda" else nullcontext()


def _parallel(devices: list[torch.device], work: Callable[[int], Any]) -> list[Any]:
    """work(k) for every device k at once (one thread each: kernels of different GPUs overlap)."""
    def run(k):
        with _on(devices[k]):
            return work(k)

    if len(devices) == 1:
        return [run(0)]
    with ThreadPoolExecutor(len(devices)) as pool:
        return [f.result() for f in [pool.submit(run, k) for k in range(len(devices))]]


def deal_layers(modules: dict[str, nn.Module], together: list[list[str]], n: int) -> list[list[str]]:
    """The target names dealt out to n devices, balancing weights + Hessian sizes; names in one group of
    `together` (fed the same input) go to the same device."""
    def cost(names):
        return sum(modules[x].weight.numel() + modules[x].weight.shape[-1] ** 2 for x in names)

    shares: list[list[str]] = [[] for _ in range(n)]
    load = [0] * n
    for group in sorted(together, key=cost, reverse=True):
        k = load.index(min(load))
        shares[k] += group
        load[k] += cost(group)
    return shares


def calibrate_spread(model: nn.Module, samples: list[dict[str, Any]], targets: set[str],
                     make: Callable[[], BlockAlgorithm], devices: list[torch.device], desc: str,
                     unseen: Unseen) -> list[torch.device]:
    """calibrate_layerwise over `devices` (see the module's docstring); returns the devices used (no more
    than there are samples). A model streamed from its shards is read one block at a time, as in
    run_layerwise (and with an offload folder each finished block goes to disk)."""
    check_spreadable(make, desc)
    devices = devices[:max(1, len(samples))]  # (a device without samples would have nothing to do)
    first = devices[0]
    with block_stack(model, samples, first) as stack:
        inputs, kwargs = stack.take_inputs()
        shards = [([inputs[j].to(d) for j in range(k, len(inputs), len(devices))],
                   _to([kwargs[j] for j in range(k, len(inputs), len(devices))], d)) for k, d in enumerate(devices)]
        del inputs, kwargs
        bar = progress(range(len(stack.blocks)), desc=desc, total=len(stack.blocks))
        start, widened = time.perf_counter(), False
        for i in bar:
            block = stack.read(i)
            copies = [copy.deepcopy(block).to(d) for d in devices]
            wide = computes_in_float32(copies[0], first)
            if wide and not widened:  # (a 16-bit block on CPUs: float32 hidden states, as in run_layerwise)
                shards, widened = [([h.float() for h in hs], _as_float32(kws)) for hs, kws in shards], True
            if block_targets(copies[0], stack.name(i), targets):
                copies = _calibrate_block(copies, stack.name(i), targets, make, shards, devices, wide, unseen)

            def outputs(k):
                hs, kws = shards[k]
                with float32_compute(copies[k], wide), torch.no_grad():
                    for j in range(len(hs)):
                        hs[j] = call_block(copies[k], hs[j], kws[j])

            _parallel(devices, outputs)
            stack.done(i, copies[0])
            del copies, block
            if first.type == "cuda":
                torch.cuda.empty_cache()
            step_done(bar, f"{desc}: block {i + 1}/{len(stack.blocks)} on {len(devices)} devices, "
                      f"{time.perf_counter() - start:.0f} s", first)
    return devices


def _calibrate_block(copies, name, targets, make, shards, devices, wide, unseen) -> list[nn.Module]:
    mods = [block_targets(c, name, targets) for c in copies]
    algorithms = [make() for _ in devices]
    seen: dict[str, torch.Tensor] = {}  # the first input of each target on device 0: who shares an input
    fed: set[str] = set()  # the targets that saw an input on any device

    def feed(k):
        def observe(n, module, x):
            if k == 0 and n not in seen:
                seen[n] = x
            fed.add(n)
            algorithms[k].observe(n, module, x)

        with float32_compute(copies[k], wide):
            feed_block(copies[k], mods[k], *shards[k], observe)

    _parallel(devices, feed)
    idle = [take_unseen(m, fed) for m in mods]
    if idle[0]:
        with float32_compute(copies[0], wide), torch.no_grad():
            unseen(copies[0], idle[0])
    algorithms[0].merge(algorithms[1:])
    together: list[list[str]] = []
    for n in mods[0]:
        group = next((g for g in together if seen.get(g[0]) is not None and seen[g[0]] is seen.get(n)), None)
        if group is None:
            together.append([n])
        else:
            group.append(n)
    seen.clear()
    shares = deal_layers(mods[0], together, len(devices))
    parts = [algorithms[0].subset(share, devices[k]) if share else None for k, share in enumerate(shares)]
    del algorithms

    def finish(k):
        if parts[k] is None:
            return
        with float32_compute(copies[k], wide), torch.no_grad():
            parts[k].finish(copies[k], {n: mods[k][n] for n in shares[k]}, name)

    _parallel(devices, finish)
    for k in range(1, len(devices)):  # the changed layers into the first copy
        for n in shares[k]:
            replace_module(copies[0], n, copies[k].get_submodule(n).to(devices[0]))
    return [copies[0]] + [copy.deepcopy(copies[0]).to(d) for d in devices[1:]]
