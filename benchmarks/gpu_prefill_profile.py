"""Where an eager (not graphed) prefill of an int4 / fp8 Llama spends its time (issue 17, BENCHMARKS 9s: int4 and fp8
prefill ran 0.2-0.5x bf16 at 128-512 prompt rows). Diagnostic, on the device machine:

  python benchmarks/gpu_prefill_profile.py --layers 2 --rows 128,512 [--part model,layer,selfcheck]
  (the prefill benchmark itself, `python benchmarks/gpu_llm.py prefill ...`, runs bench_prefill below)
  NNSLIM_FAST_LAUNCH=0 python benchmarks/gpu_prefill_profile.py ...   # every launch through Triton's binding

For each variant and prompt length, after warm-up calls: the GPU time of one forward (CUDA events), the host time
to issue it (perf_counter without a sync: host-bound when it is close to the GPU time), the sum of the kernels' GPU
time (torch.profiler), the 12 Python functions with the most own time (cProfile), and the kernel each quantized
linear chose. Then one int4 linear (4096 -> 11008) alone: back-to-back eager calls vs one call's graph replay, per
candidate, so a launcher whose host cost exceeds its kernel shows. selfcheck: what StaticDecoder's self-check
measures on the fp8 model (see selfcheck_part).
"""
from __future__ import annotations

import argparse
import cProfile
import io
import json
import os
import pstats
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

import torch  # noqa: E402

from gpu_llm import captured, llama  # noqa: E402


def _events_ms(fn, reps: int = 10) -> float:
    times = []
    for _ in range(reps):
        a, b = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        a.record()
        fn()
        b.record()
        b.synchronize()
        times.append(a.elapsed_time(b))
    return statistics.median(times)


def _host_ms(fn, reps: int = 30) -> float:
    """The least host time to issue fn (without a sync) over reps tries: the host machine's noise only adds."""
    times = []
    for _ in range(reps):
        torch.cuda.synchronize()
        t = time.perf_counter()
        fn()
        times.append((time.perf_counter() - t) * 1e3)
    torch.cuda.synchronize()
    return min(times)


def _kernel_ms(fn) -> float:
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CUDA]) as prof:
        fn()
        torch.cuda.synchronize()
    return sum(e.device_time_total for e in prof.key_averages()) / 1e3


def _top_python(fn, n: int = 12) -> str:
    pr = cProfile.Profile()
    pr.enable()
    for _ in range(3):
        fn()
    torch.cuda.synchronize()
    pr.disable()
    s = io.StringIO()
    pstats.Stats(pr, stream=s).sort_stats("tottime").print_stats(n)
    return "\n".join(line for line in s.getvalue().splitlines() if line.strip())[-3000:]


def model_part(args) -> None:
    from nnslim import Int4RtnConfig, quantize
    from nnslim.quant.w8a8 import Fp8Config, quantize_w8a8
    from nnslim.runtime.kernels import select

    for name in ["bf16", *args.variants.split(",")]:
        model = llama(args.layers, "cuda")
        if name == "int4":
            model = quantize(model, Int4RtnConfig(group_size=128), inplace=True)
        elif name == "fp8":
            model = quantize_w8a8(model, Fp8Config(), inplace=True)
        for t in [int(v) for v in args.rows.split(",")]:
            ids = torch.randint(0, model.config.vocab_size, (1, t), device="cuda")
            with torch.no_grad():
                fwd = warmed_prefill(model, ids)
                gpu, host, kern = _events_ms(fwd), _host_ms(fwd), _kernel_ms(fwd)
                print(f"== {name} rows {t}: events {gpu:.2f} ms, host issue (least of 30) {host:.2f} ms, "
                      f"kernels {kern:.2f} ms", flush=True)
                if name != "bf16" and t == int(args.rows.split(",")[0]):
                    print(_top_python(fwd), flush=True)
        if name != "bf16":
            for row in select.kernel_table():
                print("   chosen", row["key"], row["chosen"], flush=True)
        del model
        torch.cuda.empty_cache()
        select.reset()


def layer_part(args) -> None:
    from torch import nn

    from nnslim.quant.weight_only.formats import WeightSpec, group_qparams, quantize_codes
    from nnslim.quant.weight_only.modules import WeightOnlyLinear
    from nnslim.runtime.kernels.select import _time_cuda_graph

    k, n = 4096, 11008
    lin = nn.Linear(k, n, bias=False, dtype=torch.bfloat16, device="cuda")
    spec = WeightSpec(4, 128, True)
    s, z = group_qparams(lin.weight.detach(), spec, 128)
    m = WeightOnlyLinear.from_codes(lin, quantize_codes(lin.weight.detach(), s, z, spec), s, z, spec).cuda()
    for rows in [int(v) for v in args.layer_rows.split(",")]:
        x = torch.randn(rows, k, dtype=torch.bfloat16, device="cuda")
        ref = _events_ms(lambda: lin(x), 20)
        print(f"== one int4 linear {k}->{n}, M={rows}: bf16 F.linear eager {ref:.4f} ms", flush=True)
        seen: dict[str, float] = {}
        # the layer as a model calls it (selector, wrapper), then each candidate kernel alone
        cands = {"module-forward": lambda: m(x), **m._candidates(x)}
        for cname, fn in cands.items():
            try:
                fn()
                torch.cuda.synchronize()
                graph = _time_cuda_graph(fn)
                eager = _events_ms(lambda: [fn() for _ in range(10)], 5) / 10
                host = _host_ms(lambda: [fn() for _ in range(10)], 20) / 10
            except Exception as e:  # noqa: BLE001 - a candidate that does not run here
                print(f"   {cname}: does not run ({type(e).__name__})")
                continue
            print(f"   {cname:18s} graph {graph:.4f} ms  eager {eager:.4f} ms  host issue {host:.4f} ms", flush=True)
            seen[cname] = graph
        for cname in ["module-forward"] + sorted(seen, key=seen.get)[:3]:  # where the host time goes
            fn = cands[cname]
            pr = cProfile.Profile()
            pr.enable()
            for _ in range(200):
                fn()
            pr.disable()
            torch.cuda.synchronize()
            out = io.StringIO()
            pstats.Stats(pr, stream=out).sort_stats("tottime").print_stats(14)
            body = [ln for ln in out.getvalue().splitlines() if ln.strip() and ("{" in ln or ".py" in ln)]
            print(f"-- {cname}: 200 calls, top functions by own time\n" + "\n".join(body), flush=True)


def selfcheck_part(args) -> None:
    """StaticDecoder's self-check refused the 8-layer random-weight fp8 model (BENCHMARKS 9s): its metric (max abs
    difference of the last-token logits / max(1, max |ref|)) for the unfused, fused and RMSNorm-quantizing decoders
    against the model's forward, beside what fp8 itself moves (the bf16 model vs its fp8 copy) and what one
    bf16 rounding of the input moves in the fp8 model (its sensitivity to rounding alone)."""
    from nnslim.quant.w8a8 import Fp8Config, quantize_w8a8
    from nnslim.runtime.decode import StaticDecoder

    def metric(a, ref):
        return float((a.float() - ref).abs().max()) / max(1.0, float(ref.abs().max()))

    bf = llama(args.layers_check, "cuda")
    ids = torch.randint(0, bf.config.vocab_size, (1, 8), generator=torch.Generator().manual_seed(0)).cuda()
    with torch.no_grad():
        ref_bf = bf(input_ids=ids, use_cache=False).logits[:, -1].float()
        q = quantize_w8a8(bf, Fp8Config(), inplace=True)
        ref = q(input_ids=ids, use_cache=False).logits[:, -1].float()
        emb = q.model.embed_tokens(ids)
        bumped = q(inputs_embeds=(emb.float() * (1 + 2**-8)).to(emb.dtype), use_cache=False).logits[:, -1].float()
        out = {"fp8_vs_bf16_model": metric(ref, ref_bf), "fp8_input_rounding": metric(bumped, ref),
               "logit_max": float(ref.abs().max())}
        pos = torch.arange(8, device="cuda")
        for name, kw in [("unfused", dict(fused=False)), ("fused", dict(fused=True, norm_quant=False)),
                         ("fused_normquant", dict(fused=True))]:
            dec = StaticDecoder.__new__(StaticDecoder)
            dec._verify = lambda: None  # the check under study, skipped to measure what it measures
            try:
                StaticDecoder.__init__(dec, q, 16, use_graph=False, **kw)
                out[name] = metric(dec.forward(ids, pos), ref)
            except Exception as e:  # noqa: BLE001
                out[name] = f"{type(e).__name__}: {e}"[:120]
    print("== fp8 self-check, %d layers:" % args.layers_check, {k: (round(v, 4) if isinstance(v, float) else v)
                                                             for k, v in out.items()}, flush=True)


def bench_prefill(args) -> list[dict]:
    """The prompt's forward pass (what a user waits for before the first token; M = batch x prompt rows reach the
    int4 / fp8 GEMMs): ms and tokens/s per variant and (batch, prompt), each a ratio vs bf16 at the same shape.
    The Hugging Face forward with logits of the last position only (logits_to_keep=1, as serving computes them);
    warm-up calls first (the kernel selector times its candidates then), then the median of --runs x 5 calls
    timed by CUDA events."""
    from nnslim import Int4RtnConfig, quantize
    from nnslim.quant.w8a8 import Fp8Config, quantize_w8a8

    rows, base = [], {}
    for name in ["bf16"] + [v for v in args.variants.split(",") if v]:
        model = llama(args.layers, "cuda")
        if name == "int4":
            model = quantize(model, Int4RtnConfig(group_size=128), inplace=True)
        elif name == "fp8":
            model = quantize_w8a8(model, Fp8Config(), inplace=True)
        elif name != "bf16":
            raise SystemExit(f"unknown variant {name}")
        for b in [int(v) for v in args.batch.split(",")]:
            for t in [int(v) for v in str(args.prompt_lens).split(",")]:
                ids = torch.randint(0, model.config.vocab_size, (b, t), device="cuda",
                                    generator=torch.Generator(device="cuda").manual_seed(0))
                with torch.no_grad():
                    fwd = warmed_prefill(model, ids)
                    run = _graphed(fwd) if args.graph else fwd
                    if run is None:
                        continue
                    times = []
                    for _ in range(max(1, args.runs) * 5):
                        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
                        start.record()
                        run()
                        end.record()
                        torch.cuda.synchronize()
                        times.append(start.elapsed_time(end))
                ms = statistics.median(times)
                if name == "bf16":
                    base[(b, t)] = ms
                row = {"variant": name, "batch": b, "prompt": t, "rows_M": b * t, "ms": round(ms, 3),
                       "tok_s": round(b * t / ms * 1e3, 1),
                       "vs_bf16": round(base[(b, t)] / ms, 3) if (b, t) in base else None,
                       "gluon_gemm": os.environ.get("NNSLIM_GLUON_GEMM", "default"),
                       "fast_launch": os.environ.get("NNSLIM_FAST_LAUNCH", "default"),
                       "mode": "cuda-graph" if args.graph else "eager"}
                print(json.dumps(row), flush=True)
                rows.append(row)
        del model
        torch.cuda.empty_cache()
    return rows


def warmed_prefill(model, ids):
    """The Hugging Face forward over `ids` (logits of the last position only, as serving computes them) as a
    function of no arguments, after three warm-up calls (the kernel selector times its candidates in the first)."""
    def fwd():
        model(input_ids=ids, use_cache=False, logits_to_keep=1)

    for _ in range(3):
        fwd()
    torch.cuda.synchronize()
    return fwd


def _graphed(fn):
    """fn captured in a CUDA graph (after its warm-up: the kernel selector has chosen), as graph.replay; None, with
    the reason printed, when the forward cannot be captured."""
    try:
        g = captured(fn, warmups=1)
        g.replay()
        torch.cuda.synchronize()
        return g.replay
    except Exception as e:  # noqa: BLE001 - reported, the row left out
        print(f"not capturable in a CUDA graph: {type(e).__name__}: {str(e).splitlines()[0][:160]}", flush=True)
        return None


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--layers", type=int, default=2)
    ap.add_argument("--rows", default="128,512")
    ap.add_argument("--variants", default="int4,fp8")
    ap.add_argument("--part", default="model,layer", help="any of model, layer, selfcheck")
    ap.add_argument("--layers-check", type=int, default=8)
    ap.add_argument("--layer-rows", default="128", help="layer part: rows of x")
    args = ap.parse_args()
    if not torch.cuda.is_available():
        raise SystemExit("needs a CUDA GPU (run it through the device machine)")
    parts = args.part.split(",")
    if "model" in parts:
        model_part(args)
    if "layer" in parts:
        layer_part(args)
    if "selfcheck" in parts:
        selfcheck_part(args)


if __name__ == "__main__":
    main()
