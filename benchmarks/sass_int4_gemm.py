"""Instructions per K step of nnslim's two int4 tensor-core GEMMs, compiled for sm_90 here (no GPU needed):
Triton's bundled ptxas and cuobjdump, pointers and ints marked divisible by 16 as the JIT specializes them
(without that hint the loads come out scalar and unpipelined, which misleads). BENCHMARKS.md 9h.

  python benchmarks/sass_int4_gemm.py [--tiles 128x64x128w4s4,256x128x64w8s3]

For each tile: shared memory, whether the loop is pipelined (cp.async) and the SASS op counts of the hottest
loop (the longest backward branch) for the canonical-layout kernel (triton_int4) and the MMA-layout kernel
(triton_int4_mma), packed and fp32 dequantization.
"""
from __future__ import annotations

import argparse
import re
import subprocess
import tempfile
from collections import Counter
from pathlib import Path

import triton
from triton.backends.compiler import GPUTarget
from triton.compiler import ASTSource

from nnslim.runtime.kernels import triton_int4, triton_int4_mma

CUOBJDUMP = Path(triton.__file__).parent / "backends" / "nvidia" / "bin" / "cuobjdump"
SIG = {"x_ptr": "*bf16", "qw_ptr": "*u8", "s_ptr": "*bf16", "z_ptr": "*bf16", "y_ptr": "*bf16", "M": "i32", "N": "i32",
       "stride_xm": "i32", "stride_ym": "i32"}
MMA_SIG = {**{k: v for k, v in SIG.items() if k.endswith("_ptr")}, "ws_ptr": "*fp32", "cnt_ptr": "*i32",
           **{k: v for k, v in SIG.items() if not k.endswith("_ptr")}}  # + the split-K workspace


def loop_ops(cubin: bytes) -> tuple[Counter, list[str]]:
    """(op counts, SASS lines) of the hottest loop: the longest backward branch."""
    with tempfile.NamedTemporaryFile(suffix=".cubin") as f:
        f.write(cubin)
        f.flush()
        sass = subprocess.run([str(CUOBJDUMP), "-sass", f.name], capture_output=True, text=True, check=True).stdout
    lines = [ln for ln in sass.splitlines() if re.match(r"\s+/\*[0-9a-f]{4,5}\*/", ln)]
    addr = [int(re.match(r"\s+/\*([0-9a-f]+)\*/", ln).group(1), 16) for ln in lines]
    best = (0, -1)
    for i, ln in enumerate(lines):
        m = re.search(r"BRA (0x[0-9a-f]+)", ln)
        if m and int(m.group(1), 16) < addr[i] and int(m.group(1), 16) in addr:
            j = addr.index(int(m.group(1), 16))
            best = max(best, (j, i), key=lambda p: p[1] - p[0])
    ops = [re.sub(r"^\s*/\*[0-9a-f]+\*/\s+(@!?U?P\w+\s+)?", "", ln).split()[0].split(".")[0] for ln in lines]
    return Counter(ops[best[0]:best[1] + 1]), lines[best[0]:best[1] + 1]


def wgmma_waits(loop: list[str]) -> str:
    """The loop's wgmmas and what each wait leaves in flight: 8 HGMMA, waits <= 7 x8 means a wgmma is never waited
    for until 7 newer ones were issued (the dequantization of the next K step overlaps them)."""
    found = (re.search(r"WARPGROUP\.DEPBAR\.LE gsb0, (0x[0-9a-f]+)", ln) for ln in loop)
    waits = Counter(int(m.group(1), 16) for m in found if m)
    hgmma = sum("HGMMA" in ln for ln in loop)
    return f"{hgmma} HGMMA" + "".join(f", waits <= {n} x{c}" for n, c in sorted(waits.items()))


def compile_tile(fn, consts: dict, warps: int, stages: int):
    args = MMA_SIG if fn is triton_int4_mma._int4_gemm_mma_kernel else SIG
    sig = {**args, **{k: "constexpr" for k in consts}}
    src = ASTSource(fn=fn, signature=sig, constexprs=consts,
                    attrs={(i,): [["tt.divisibility", 16]] for i in range(len(args))})
    return triton.compile(src, target=GPUTarget("cuda", 90, 32), options=dict(num_warps=warps, num_stages=stages))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--tiles", default="128x64x128w4s4,256x128x64w8s3,128x128x128w8s3")
    args = ap.parse_args()
    print("| tile | kernel | shared KB | cp.async | loop instructions | shared loads | wgmma in the loop | top ops |\n"
          "|---|---|---|---|---|---|---|---|")
    for tile in args.tiles.split(","):
        bm, bn, bk, w, st = map(int, re.match(r"(\d+)x(\d+)x(\d+)w(\d+)s(\d+)", tile).groups())
        base = dict(K=4096, GROUP=128, HAS_ZERO=False, BLOCK_M=bm, BLOCK_N=bn, BLOCK_K=bk, GROUP_N=8, SPLIT_K=1)
        variants = {"canonical (triton_int4)": (triton_int4._int4_gemm_tc_kernel, {**base, "SWAP": True}),
                    "MMA layout, packed": (triton_int4_mma._int4_gemm_mma_kernel,
                                           {**base, "ASM": triton_int4_mma.ASM, "PACKED": True, "ATOMIC": False}),
                    "MMA layout, fp32 dequant": (triton_int4_mma._int4_gemm_mma_kernel,
                                                 {**base, "ASM": triton_int4_mma.ASM, "PACKED": False,
                                                  "ATOMIC": False})}
        for label, (fn, consts) in variants.items():
            k = compile_tile(fn, consts, w, st)
            ops, loop = loop_ops(k.asm["cubin"])
            top = ", ".join(f"{o} {c}" for o, c in ops.most_common(6))
            print(f"| {tile} | {label} | {k.metadata.shared / 1024:.0f} | "
                  f"{'yes' if 'async_copy_global_to_local' in k.asm['ttgir'] else 'no'} | {sum(ops.values())} | "
                  f"{ops['LDS']} | {wgmma_waits(loop)} | {top} |", flush=True)


if __name__ == "__main__":
    main()
