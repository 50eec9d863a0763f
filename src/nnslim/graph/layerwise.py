"""Run a model one repeated block (decoder layer) at a time: the shared driver of GPTQ, AWQ and
layer-wise calibration methods (and of SparseGPT/Wanda-style pruning).

1. The inputs of the first block are captured by running the model on each calibration sample
   until the first block is reached (the blocks never run on the device during capture).
2. For each block: it is moved to the device, `process(index, name, block, inputs, kwargs)` changes
   it in place (e.g. quantizes its Linears from statistics of `inputs`), its outputs on the inputs are
   computed *with the changed block* and become the next block's inputs, and it goes back.
Peak device memory stays near one block plus the calibration activations.
"""
from __future__ import annotations

import inspect
import os
import time
from contextlib import contextmanager, nullcontext
from typing import Any, Callable, Protocol

import torch
from torch import nn
from torch.nn.modules.module import register_module_forward_hook, register_module_forward_pre_hook
from torch.nn.utils import parametrize

from ..errors import NnslimError
from ..io import big_allocations_mapped, trim_heap
from ..progress import progress, step_done
from .streaming import source_of


class _Reached(Exception):
    pass


def find_blocks(model: nn.Module) -> tuple[str, nn.ModuleList]:
    """The ModuleList of repeated blocks holding most of the parameters (e.g. model.model.layers): blocks of one
    type and the same shapes, so each one's output is the next one's input (not the stages of a Swin / ConvNeXt,
    whose widths and resolutions change: there, the blocks of one stage)."""
    best, best_params, stages, stage_params = None, 0, None, 0
    for name, mod in model.named_modules():
        if isinstance(mod, nn.ModuleList) and len(mod) >= 1 and len({type(m) for m in mod}) == 1:
            shapes: dict[str, set] = {}  # a key's shapes across the blocks (T5's first block alone has its
            for m in mod:               # relative position bias: a key in some blocks only is allowed)
                for k, v in m.state_dict().items():
                    shapes.setdefault(k, set()).add(tuple(v.shape))
            params = sum(p.numel() for p in mod.parameters())
            if all(len(v) == 1 for v in shapes.values()) and params > best_params:
                best, best_params = (name, mod), params
            elif params > stage_params:
                stages, stage_params = (name, mod), params
    best = best or stages  # only stages of changing widths (a ResNet's): each one's output is still the next's input
    if best is None:
        raise NnslimError(f"{type(model).__name__} has no list of repeated blocks (nn.ModuleList of one "
                          "layer type and shape); layer-by-layer calibration needs a decoder/encoder stack")
    return best


def _to(obj: Any, device, memo: dict | None = None) -> Any:
    """obj (tensors inside tuples / lists / dicts) on `device`; a tensor found several times (one mask that
    several samples share) becomes one tensor there."""
    memo = {} if memo is None else memo
    if isinstance(obj, torch.Tensor):
        if id(obj) not in memo:
            memo[id(obj)] = (obj, obj.to(device))  # (obj held: its id stays unique)
        return memo[id(obj)][1]
    if isinstance(obj, tuple):
        return tuple(_to(o, device, memo) for o in obj)
    if isinstance(obj, list):
        return [_to(o, device, memo) for o in obj]
    if isinstance(obj, dict):
        return {k: _to(v, device, memo) for k, v in obj.items()}
    return obj


def _move_rest(model: nn.Module, blocks: nn.ModuleList, device) -> None:
    """Move every parameter/buffer not inside `blocks` to `device`."""
    inside = {id(t) for t in list(blocks.parameters()) + list(blocks.buffers())}
    for mod in model.modules():
        for key, p in list(mod._parameters.items()):
            if p is not None and id(p) not in inside and not p.is_meta:
                p.data = p.data.to(device)
        for key, b in list(mod._buffers.items()):
            if b is not None and id(b) not in inside and not b.is_meta:
                mod._buffers[key] = b.to(device)


def _input_embedding(model: nn.Module) -> nn.Module | None:
    """The token table of the outermost transformers model inside `model` (a testbed's wrapper holds one; a
    vision-language model's first nn.Embedding is its image encoder's positions), else the first nn.Embedding."""
    hf = next((m for m in model.modules() if callable(getattr(m, "get_input_embeddings", None))), None)
    getter = getattr(hf, "get_input_embeddings", None)
    if callable(getter):
        try:
            emb = getter()
        except (NotImplementedError, AttributeError):
            return None
        return emb if isinstance(emb, nn.Embedding) else None
    return next((m for m in model.modules() if isinstance(m, nn.Embedding)), None)


def check_token_ids(model: nn.Module, samples: list[dict[str, Any]], field: str = "calibration") -> None:
    """Token ids must be integers inside the vocabulary (an out-of-range id would index out of bounds). The table
    that reads them: a transformers model's input embeddings (none known: CANINE hashes Unicode code points into
    small tables, so the range is not checked), else the model's first nn.Embedding."""
    emb = _input_embedding(model)
    for i, sample in enumerate(samples):
        ids = sample.get("input_ids") if isinstance(sample, dict) else None
        if ids is None:
            continue
        try:
            t = torch.as_tensor(ids)
        except (TypeError, ValueError, RuntimeError) as e:
            raise NnslimError(f"{field}[{i}]['input_ids'] is not an array of token ids: {str(e)[:100]}") from None
        if t.is_floating_point() or t.is_complex() or t.dtype == torch.bool:
            raise NnslimError(f"{field}[{i}]['input_ids'] has dtype {t.dtype}; token ids must be integers")
        if emb is not None and t.numel() and (int(t.min()) < 0 or int(t.max()) >= emb.num_embeddings):
            raise NnslimError(f"{field}[{i}]['input_ids'] has ids in {int(t.min())}..{int(t.max())}; allowed: "
                              f"0..{emb.num_embeddings - 1} (the model's vocabulary)")


class BlocksNotCalled(NnslimError):
    """The model ran without calling its list of blocks as modules (SqueezeBERT calls layer.forward(); Funnel's list
    holds lists): calibrate_layerwise then calibrates the whole model at once."""


def capture_inputs(model: nn.Module, blocks: nn.ModuleList, samples: list[dict[str, Any]], device
                   ) -> tuple[list[torch.Tensor], list[dict[str, Any]]]:
    """Hidden states and keyword arguments with which the first block is called, per sample."""
    check_token_ids(model, samples)
    inputs, kwargs_list = [], []

    def hook(_mod, args, kwargs):
        hidden = args[0] if args else kwargs.pop("hidden_states")
        kw = {k: v for k, v in kwargs.items() if k != "hidden_states"}
        for key in ("past_key_values", "past_key_value", "layer_past"):
            if key in kw:
                kw[key] = None
        kw.update({f"__arg{i}": a for i, a in enumerate(args[1:], 1)})
        inputs.append(hidden.detach())
        kwargs_list.append(kw)
        raise _Reached

    handle = blocks[0].register_forward_pre_hook(hook, with_kwargs=True)
    takes_cache_flag = "use_cache" in inspect.signature(model.forward).parameters
    try:
        with torch.no_grad():
            for sample in samples:
                feed = {k: torch.as_tensor(v).to(device) for k, v in sample.items()}
                if takes_cache_flag:
                    feed["use_cache"] = False  # blocks are re-run many times: no KV cache may grow
                try:
                    model(**feed)
                except _Reached:
                    continue
                raise BlocksNotCalled(f"the model returned without calling its first block ({type(blocks[0]).__name__}"
                                      f" of {len(blocks)}) as a module: a list of lists, or blocks called through "
                                      ".forward(), which module hooks do not see")
    finally:
        handle.remove()
    # Samples of one length get equal masks / position tensors: keep one copy, not one per sample.
    for prev, kw in zip(kwargs_list, kwargs_list[1:]):
        for key, value in kw.items():
            old = prev.get(key)
            if (isinstance(value, torch.Tensor) and isinstance(old, torch.Tensor) and value.shape == old.shape
                    and value.dtype == old.dtype and torch.equal(value, old)):
                kw[key] = old
            elif isinstance(value, tuple) and isinstance(old, tuple) and len(value) == len(old) and all(
                    isinstance(a, torch.Tensor) and isinstance(b, torch.Tensor) and a.shape == b.shape
                    and torch.equal(a, b) for a, b in zip(value, old)):
                kw[key] = old
    return inputs, kwargs_list


def call_block(block: nn.Module, hidden: torch.Tensor, kwargs: dict[str, Any], raw: bool = False):
    """The block's output hidden states (raw=True: what the block returned, a tuple for some models)."""
    args = [hidden] + [kwargs[k] for k in sorted(k for k in kwargs if k.startswith("__arg"))]
    kw = {k: v for k, v in kwargs.items() if not k.startswith("__arg")}
    out = block(*args, **kw)
    return out if raw else out[0] if isinstance(out, (tuple, list)) else out


def _trace(phase: str, device: torch.device) -> None:
    """NNSLIM_TRACE_MEMORY=1: print allocated / peak device memory at each phase (memory debugging)."""
    if device.type == "cuda" and os.environ.get("NNSLIM_TRACE_MEMORY"):
        print(f"[nnslim memory] {phase}: allocated {torch.cuda.memory_allocated() / 2**30:.2f} GB, "
              f"peak {torch.cuda.max_memory_allocated() / 2**30:.2f} GB", flush=True)


def feed_block(block: nn.Module, modules: dict[str, nn.Module], inputs: list[torch.Tensor],
               kwargs: list[dict[str, Any]], on_input: Callable[[str, nn.Module, torch.Tensor], None]) -> None:
    """Run `block` on every input, calling on_input(name, module, x) with the input x of each of `modules`
    (MoE experts: every expert on every token, graph/experts.py)."""
    from .experts import all_experts_see_every_token

    handles = [m.register_forward_pre_hook(lambda mod, args, n=n: on_input(n, mod, args[0]))
               for n, m in modules.items()]
    try:
        with torch.no_grad(), all_experts_see_every_token(block):
            for h, kw in zip(inputs, kwargs):
                call_block(block, h, kw)
    finally:
        for handle in handles:
            handle.remove()


def take_unseen(mods: dict[str, nn.Module], seen: set[str]) -> dict[str, nn.Module]:
    """Remove and return the targets of `mods` that are not in `seen`."""
    return {n: mods.pop(n) for n in list(mods) if n not in seen}


def block_targets(block: nn.Module, block_name: str, names: set[str]) -> dict[str, nn.Module]:
    """{name relative to the block: module} for the target names inside this block, in the block's own order (not
    the set's, which changes between processes: an algorithm whose layers depend on each other, AWQ's folds, gives
    the same bits in every run)."""
    inside = {n[len(block_name) + 1:] for n in names if n.startswith(block_name + ".")}
    return {n: m for n, m in block.named_modules() if n in inside}


HALF = (torch.bfloat16, torch.float16)


def computes_in_float32(block: nn.Module, device: torch.device) -> bool:
    """On a CPU, a block with 16-bit weights is calibrated in float32: CPUs without native bf16/fp16
    matmuls run them several times slower than fp32 (measured 17 vs 84 GFLOPS, BENCHMARKS 10b), and
    fp32 activations lose nothing. The same rule on every CPU, so the result does not depend on its
    flags; on a GPU the block runs in its own dtype."""
    return device.type == "cpu" and any(t.dtype in HALF for t in block.parameters())


@contextmanager
def float32_compute(block: nn.Module, active: bool = True):
    """While active: each module of `block` runs its forward with its own 16-bit parameters and buffers
    (and those of its parametrizations, e.g. a pruning mask's original weight) swapped for float32
    copies, made just before and dropped just after: at most one layer's weights in float32 at a
    time; the stored tensors are never changed by it. Modules created inside (a quantized layer that
    replaces a Linear) are covered too: the hooks are global while the context is open."""
    if not active:
        yield
        return
    inside = {id(m) for m in block.modules()}
    swapped: list[list] = []  # per running module: (module, key, its own 16-bit tensor)

    def own(mod):
        mods = [mod]
        if parametrize.is_parametrized(mod):
            mods += list(mod.parametrizations.modules())
        for m in mods:
            for key, t in list(m._parameters.items()) + list(m._buffers.items()):
                if t is not None and t.dtype in HALF:
                    yield m, key, t

    def before(mod, _args):
        if id(mod) not in inside and not any(m is mod for m in block.modules()):
            return
        inside.add(id(mod))
        entries = []
        for m, key, t in own(mod):
            if key in m._parameters:
                entries.append((m, key, t.data))
                t.data = t.data.float()
            else:
                entries.append((m, key, t))
                m._buffers[key] = t.float()
        swapped.append(entries)

    def after(mod, *_):
        if id(mod) in inside and swapped:
            restore(swapped.pop())

    def restore(entries) -> None:
        for m, key, t in entries:
            if key in m._parameters:
                m._parameters[key].data = t
            else:
                m._buffers[key] = t

    handles = [register_module_forward_pre_hook(before), register_module_forward_hook(after, always_call=True)]
    try:
        yield
    finally:
        for h in handles:
            h.remove()
        while swapped:
            restore(swapped.pop())


def _as_float32(obj: Any, memo: dict | None = None) -> Any:
    """16-bit tensors inside obj widened; a tensor shared by several samples (one mask) stays shared."""
    memo = {} if memo is None else memo
    if isinstance(obj, torch.Tensor):
        if obj.dtype not in HALF:
            return obj
        if id(obj) not in memo:
            memo[id(obj)] = (obj, obj.float())  # (obj held: its id stays unique)
        return memo[id(obj)][1]
    if isinstance(obj, (tuple, list)):
        return type(obj)(_as_float32(o, memo) for o in obj)
    if isinstance(obj, dict):
        return {k: _as_float32(v, memo) for k, v in obj.items()}
    return obj


class BlockStack:
    """The repeated blocks of a model being calibrated one at a time, and the first block's captured inputs
    (see block_stack). A streamed model's blocks are read from its shards by `read` and, with an offload
    folder, go back to disk in `done`."""

    def __init__(self, prefix: str, blocks: nn.ModuleList, source, home: torch.device, inputs, kwargs):
        self.prefix, self.blocks, self.source, self.home = prefix, blocks, source, home
        self.captured = (inputs, kwargs)

    def take_inputs(self) -> tuple[list[torch.Tensor], list[dict[str, Any]]]:
        """The first block's inputs and keyword arguments per sample, handed over (not held here too)."""
        captured, self.captured = self.captured, None
        return captured

    def name(self, i: int) -> str:
        return f"{self.prefix}.{i}"

    def read(self, i: int) -> nn.Module:
        if self.source is not None:
            self.source.materialize(self.blocks[i], self.name(i))
        return self.blocks[i]

    def done(self, i: int, block: nn.Module) -> None:
        self.blocks[i] = block.to(self.home)
        if self.source is not None:  # with an offload folder: the finished block goes to disk
            self.source.offload(self.blocks[i], self.name(i))
            trim_heap()


@contextmanager
def block_stack(model: nn.Module, samples: list[dict[str, Any]], device: torch.device):
    """The model's blocks, with everything else on `device` and the first block's inputs captured there; on
    exit everything goes back where it was (use_cache too). Streamed: big allocations mmapped (so freed
    blocks leave no heap holes), blocks stay on meta until read, the head is never read."""
    if not samples:
        raise NnslimError("layer-by-layer calibration needs at least one calibration sample")
    source = source_of(model)  # a model on meta, read from its shards one block at a time
    with big_allocations_mapped(8 << 20) if source is not None else nullcontext():
        prefix, blocks = find_blocks(model)
        home = next((t.device for t in model.parameters() if not t.is_meta), torch.device("cpu"))
        if source is None:  # (streamed blocks are still on meta: each is read where it is processed)
            blocks.to("cpu" if device.type != home.type else home)
        _move_rest(model, blocks, device)
        use_cache = getattr(getattr(model, "config", None), "use_cache", None)
        try:
            with source.read_on_call(model, blocks, device) if source is not None else nullcontext():
                captured = capture_inputs(model, blocks, samples, device)
            stack = BlockStack(prefix, blocks, source, home, *captured)
            del captured
            yield stack
        finally:
            _move_rest(model, blocks, home)
            if not any(t.is_meta for t in blocks.parameters()):
                blocks.to(home)
            if use_cache is not None:
                model.config.use_cache = use_cache


def run_layerwise(model: nn.Module, samples: list[dict[str, Any]],
                  process: Callable[[int, str, nn.Module, list[torch.Tensor], list[dict]], None],
                  device: str | torch.device = "cpu", desc: str = "layer-wise") -> None:
    """Apply `process` to each block in order, feeding each block the outputs of the processed ones."""
    device = torch.device(device)
    with block_stack(model, samples, device) as stack:
        inputs, kwargs = stack.take_inputs()
        kwargs = _to(kwargs, device)
        _trace("after capture", device)
        bar = progress(range(len(stack.blocks)), desc=desc, total=len(stack.blocks))
        widened = False
        start = time.perf_counter()
        for i in bar:
            block = stack.read(i).to(device)
            wide = computes_in_float32(block, device)
            if wide and not widened:  # from here on the hidden states are float32 (computes_in_float32)
                inputs, kwargs, widened = [h.float() for h in inputs], _as_float32(kwargs), True
            with float32_compute(block, wide):
                process(i, stack.name(i), block, inputs, kwargs)
                _trace(f"block {i} processed", device)
                with torch.no_grad():  # in place: each input is freed as soon as its output exists
                    for j in range(len(inputs)):
                        inputs[j] = call_block(block, inputs[j], kwargs[j])
            _trace(f"block {i} outputs", device)
            stack.done(i, block)
            if device.type == "cuda":
                torch.cuda.empty_cache()
            step_done(bar, f"{desc}: block {i + 1}/{len(stack.blocks)}, {time.perf_counter() - start:.0f} s", device)


class BlockAlgorithm(Protocol):
    """One layer-wise method (GPTQ, AWQ, SparseGPT, Wanda): it sees the inputs of a block's target
    layers, then changes the block in place. A new object is made for every block."""

    def observe(self, name: str, module: nn.Module, x: torch.Tensor) -> None:
        """One input x of the target `name` (relative to the block) while the block runs."""

    def finish(self, block: nn.Module, modules: dict[str, nn.Module], prefix: str) -> None:
        """Change the targets of `block` (named relative to it; `prefix` names the block) in place; it may
        empty `modules` as it goes (GPTQ drops each float layer once replaced)."""

    # Optional: watching(block), a context manager the block's first calibration sample runs inside (AWQ records
    # which normalization produced each target's input, and what else reads it).
    # To be spread over several GPUs (graph/spread.py) an algorithm also has
    #   merge(others): add the statistics other copies of it collected on the other devices' samples
    #     (sample j was on device j mod D), and
    #   subset(names, device): a new one holding the statistics of `names` only, moved to `device`.


MIN_TOKENS = 128


def check_layerwise_samples(samples: list, what: str) -> None:
    """Layer-wise methods need input dicts holding at least MIN_TOKENS tokens in all."""
    if not samples:
        raise NnslimError(f"calibration is empty; {what} needs calibration sequences (e.g. 128 x 512 tokens)")
    tokens = 0
    for i, s in enumerate(samples):
        if not isinstance(s, dict):
            raise NnslimError(f"calibration[{i}] is a {type(s).__name__}; expected a dict like {{'input_ids': ...}}")
        tokens += int(torch.as_tensor(next(iter(s.values()))).numel())
    if tokens < MIN_TOKENS:
        raise NnslimError(f"calibration has {tokens} tokens; {what} needs at least {MIN_TOKENS} "
                          "(128 sequences x 512 tokens is typical)")


Unseen = Callable[[nn.Module, dict[str, nn.Module]], None]


def calibrate_layerwise(model: nn.Module, samples: list[dict[str, Any]], targets: set[str],
                        make: Callable[[], BlockAlgorithm], device: torch.device | list[torch.device],
                        desc: str, unseen: Unseen, notes: list[str] | None = None) -> list[torch.device]:
    """Run a BlockAlgorithm over every block holding targets, each block fed the outputs of the
    already-changed ones (run_layerwise); a list of several devices spreads each block's work over
    them (graph/spread.py). Targets that saw no input while their block ran (a branch the samples never
    take) go to unseen(block, {name: module}) instead: the method's data-free fallback. Returns the
    devices that did the work. A model whose blocks are not called as modules is calibrated whole (a note)."""
    if _blocks_or_none(model) is None:  # a plain CNN / MLP: the whole model is the one block
        device = device[0] if isinstance(device, list) else device
        _calibrate_whole(model, samples, targets, make, device, desc, unseen)
        return [device]
    try:
        return _calibrate_blocks(model, samples, targets, make, device, desc, unseen)
    except BlocksNotCalled as e:
        if source_of(model) is not None:  # streamed from its shards: too big to run whole
            raise
        device = device[0] if isinstance(device, list) else device
        _calibrate_whole(model, samples, targets, make, device, desc, unseen)
        if notes is not None:
            notes.append(f"{desc}: calibrated the whole model in one pass, not block by block ({e})")
        return [device]


def _calibrate_blocks(model, samples, targets, make, device, desc, unseen) -> list[torch.device]:
    if isinstance(device, list):
        if len(device) > 1:
            from .spread import calibrate_spread

            return calibrate_spread(model, samples, targets, make, device, desc, unseen)
        device = device[0]
    def process(index, name, block, inputs, kwargs):
        mods = block_targets(block, name, targets)
        if not mods:
            return
        algorithm = make()
        seen: set[str] = set()

        def observe(n, module, x):
            seen.add(n)
            algorithm.observe(n, module, x)

        watching = getattr(algorithm, "watching", None)  # AWQ: which normalization produced each input
        first = 1 if callable(watching) else 0
        if first:
            with watching(block):  # the first sample only: what reads what is the same in every sample
                feed_block(block, mods, inputs[:1], kwargs[:1], observe)
        feed_block(block, mods, inputs[first:], kwargs[first:], observe)
        with torch.no_grad():
            idle = take_unseen(mods, seen)
            if idle:
                unseen(block, idle)
            if mods:
                algorithm.finish(block, mods, name)

    run_layerwise(model, samples, process, device, desc)
    return [device]


def _blocks_or_none(model: nn.Module):
    try:
        return find_blocks(model)
    except NnslimError:
        return None


def _calibrate_whole(model: nn.Module, samples: list[dict[str, Any]], targets: set[str],
                     make: Callable[[], BlockAlgorithm], device: torch.device, desc: str, unseen: Unseen) -> None:
    """calibrate_layerwise for a model without repeated blocks: one pass of the whole model over the samples
    observes every target (each sees the float model's activations), then the algorithm changes them all."""
    from ..runtime.base import TorchRunner, call_module

    home = next((p.device for p in model.parameters()), torch.device("cpu"))
    model.to(device)
    try:
        mods = {n: model.get_submodule(n) for n in targets}
        algorithm, seen = make(), set()

        def observe(n, module, x):
            seen.add(n)
            algorithm.observe(n, module, x)

        handles = [m.register_forward_pre_hook(lambda mod, args, n=n: observe(n, mod, args[0]))
                   for n, m in mods.items()]
        runner = TorchRunner(model)
        try:
            with torch.no_grad():
                for sample in progress(samples, desc=desc, total=len(samples)):
                    call_module(model, runner.to_tensors(sample))
        finally:
            for h in handles:
                h.remove()
        with torch.no_grad():
            idle = take_unseen(mods, seen)
            if idle:
                unseen(model, idle)
            if mods:
                algorithm.finish(model, mods, "")
    finally:
        model.to(home)


def split_by_blocks(model: nn.Module, targets: dict[str, nn.Module]) -> tuple[set[str], dict[str, nn.Module]]:
    """(names inside the repeated blocks, {name: module} outside them); a model without repeated blocks is one
    block (calibrate_layerwise runs it whole)."""
    found = _blocks_or_none(model)
    if found is None:
        return set(targets), {}
    prefix, _ = found
    inside = {n for n in targets if n.startswith(prefix + ".")}
    return inside, {n: m for n, m in targets.items() if n not in inside}
