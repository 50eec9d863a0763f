"""Issue 18 on the CPU: the layer-wise methods spread over two "devices" (graph/spread.py, both the CPU) on
every architecture of the Hugging Face zoo, through the CLI, against the same run on one device.

  python benchmarks/spread_zoo_cpu.py [--kinds tests|more|a,b] [--methods int4-gptq,int4-awq,wanda,sparsegpt]

For each model and method: the exit code of `nnslim compress` with the work spread over two CPU devices, and
the largest difference between its weights / codes and those of the one-device run (fraction of packed code
bytes that differ, largest relative difference of a float tensor). Two CPU devices run the very code path of two GPUs (sample shards, merged
statistics, layers dealt out, gathered and sent back), so this checks that path on real architectures; it
says nothing of speed.
"""
from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import torch
from hf_ecosystem import MORE, TASKS, _build, cli  # its header puts src/ and tests/ on the path, offline env
from hf_methods_matrix import METHODS

import nnslim.pruning.oneshot as oneshot
import nnslim.quant.weight_only.driver as driver

LAYERWISE = ("int4-gptq", "int4-awq", "wanda", "sparsegpt")


def devices(n: int) -> None:
    for mod in (driver, oneshot):
        mod.resolve_devices = lambda name, gpus: [torch.device("cpu")] * n


def differs(a: Path, b: Path) -> str:
    """How far two artifacts' tensors are apart: the fraction of integer codes that differ, and the largest
    relative norm of the difference of a float tensor (SparseGPT updates every kept weight a little)."""
    from safetensors.torch import load_file

    def tensors(d):
        out = {}
        for f in sorted(d.glob("*.safetensors")):
            out.update(load_file(str(f)))
        return out

    x, y = tensors(a), tensors(b)
    if x.keys() != y.keys() or not x:
        return "other tensors"
    ints = [k for k in x if not x[k].is_floating_point()]
    floats = [k for k in x if x[k].is_floating_point()]
    codes = max((float((x[k] != y[k]).float().mean()) for k in ints), default=0.0)
    rel = max(float((x[k].double() - y[k].double()).norm() / x[k].double().norm().clamp(min=1e-30)) for k in floats)
    return f"codes {codes:.2%}, floats {rel:.0e}"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--kinds", default="tests")
    ap.add_argument("--methods", default=",".join(LAYERWISE))
    args = ap.parse_args()
    kinds = {"more": list(MORE), "tests": list(TASKS)}.get(args.kinds, args.kinds.split(","))
    methods = args.methods.split(",")
    out = Path(tempfile.mkdtemp(prefix="nnslim-spread-"))
    print(f"command: python benchmarks/spread_zoo_cpu.py --kinds {args.kinds} --methods {args.methods}; date "
          f"{time.strftime('%Y-%m-%d %H:%M')}\n\n| model | " + " | ".join(methods) + " |\n|---|" + "---|" * len(methods))
    bad = 0
    for kind in kinds:
        src = _build(kind, out / "zoo")
        cells = []
        for method in methods:
            codes = []
            for n in (1, 2):
                devices(n)
                try:
                    codes.append(cli(["compress", "--model", str(src), *METHODS[method], "--out",
                                      str(out / f"{kind}-{method}-{n}"), "--overwrite", "--no-report"]))
                except Exception as e:  # noqa: BLE001 - a crash is what this looks for
                    codes.append(f"crash: {type(e).__name__}: {str(e)[:80]}")
            ok = codes == [0, 0]
            bad += not ok
            diff = differs(out / f"{kind}-{method}-1", out / f"{kind}-{method}-2") if ok else ""
            cells.append(f"{codes[1]} ({diff})" if ok else f"1 device: {codes[0]}, 2: {codes[1]}")
        print(f"| {kind} | " + " | ".join(cells) + " |", flush=True)
    print(f"\n{bad} of {len(kinds) * len(methods)} pairs did not both exit 0")


if __name__ == "__main__":
    main()
