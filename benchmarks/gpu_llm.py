"""GPU benchmarks for issue 5 (run on the device machine; every figure is a ratio vs bf16 in the same run).

  python benchmarks/gpu_llm.py kernels   # Llama-7B linear shapes: int4 / fp8 / int8 vs bf16 F.linear, per M
  python benchmarks/gpu_llm.py decode    # Llama-7B-shaped model, batch-1 greedy decode in a CUDA graph
  python benchmarks/gpu_llm.py batched   # fused decode at batch 1/8/32 and KV-cache formats, with memory floors
  python benchmarks/gpu_llm.py prefill --batch 1,4 --prompt-lens 128,512,2048   # the prompt's forward pass
  python benchmarks/gpu_llm.py prefill ... --graph   # the same forward replayed from a CUDA graph (kernels only)
  python benchmarks/gpu_llm.py gptq      # GPTQ of the whole 7B-shaped model: wall time, peak GPU memory
  python benchmarks/gpu_llm.py render --json FILE   # Markdown table of a saved run (no GPU needed)

Timing: each variant is captured in a CUDA graph that runs R copies of the layer (R chosen so the
weights of all copies exceed the 50 MB L2: otherwise small int4 weights would be timed from cache),
replayed many times; median per layer call from triton.testing.do_bench on the graph replay.
Exactness: every kernel is checked against the dequantize-then-matmul reference (relative error).
"""
from __future__ import annotations

import argparse
import functools
import json
import os
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")

import torch  # noqa: E402
from torch import nn  # noqa: E402
from torch.nn import functional as F  # noqa: E402

LLAMA7B = dict(hidden_size=4096, intermediate_size=11008, num_hidden_layers=32, num_attention_heads=32,
               num_key_value_heads=32, vocab_size=32000, max_position_embeddings=4096)
SHAPES = [(4096, 4096), (4096, 11008), (11008, 4096)]  # (K in, N out): q/k/v/o, gate/up, down
L2_BYTES = 50 * 2**20


def save_rows(path: str | None, rows: list[dict]) -> None:
    """Write a run's rows with the machine they ran on (a script's --json), if a path was given."""
    if path:
        Path(path).write_text(json.dumps({"machine": machine(), "rows": rows}, indent=1))


def machine() -> str:
    p = torch.cuda.get_device_properties(0)
    return f"{p.name}, {p.multi_processor_count} SMs, torch {torch.__version__}"


def captured(fn, warmups: int = 2) -> "torch.cuda.CUDAGraph":
    """fn captured in a CUDA graph, after `warmups` calls on a side stream."""
    s = torch.cuda.Stream()
    s.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(s):
        for _ in range(warmups):
            fn()
    torch.cuda.current_stream().wait_stream(s)
    g = torch.cuda.CUDAGraph()
    with torch.cuda.graph(g):
        fn()
    return g


def graph_time(fn, reps_inside: int, rep_ms: int = 300) -> float:
    """Median ms per call of fn (which runs reps_inside layer calls) replayed from a CUDA graph."""
    import triton.testing

    g = captured(fn)
    ms = triton.testing.do_bench(g.replay, warmup=min(50, rep_ms), rep=rep_ms, return_mode="median")
    return ms / reps_inside


def rel_err(y, ref) -> float:
    return float((y.float() - ref.float()).norm() / ref.float().norm().clamp(min=1e-12))


def _copies(bytes_each: int) -> int:
    return max(1, min(64, -(-4 * L2_BYTES // bytes_each)))


def int4_parts(k: int, n: int, group: int = 128):
    """A random bf16 Linear [n, k] on CUDA and its symmetric int4 codes, scales, zeros and spec."""
    from nnslim.quant.weight_only.formats import WeightSpec, group_qparams, quantize_codes

    spec = WeightSpec(4, group, True)
    lin = nn.Linear(k, n, bias=False, dtype=torch.bfloat16, device="cuda")
    nn.init.normal_(lin.weight, std=0.02)
    scale, zero = group_qparams(lin.weight.detach(), spec, group)
    return lin, quantize_codes(lin.weight.detach(), scale, zero, spec), scale, zero, spec


def int4_layer_copies(k: int, n: int):
    """(bf16 weights, int4 layers, their count, the bf16 count): enough copies of one random [n, k] layer in both
    forms that timing a pass over them reads more than L2 holds."""
    from nnslim.quant.weight_only.modules import WeightOnlyLinear

    lin, codes, scale, zero, spec = int4_parts(k, n)
    r4, r16 = _copies(k * n // 2), _copies(k * n * 2)
    mods = [WeightOnlyLinear.from_codes(lin, codes, scale, zero, spec).cuda() for _ in range(r4)]
    return [lin.weight.detach().clone() for _ in range(r16)], mods, r4, r16


def shapes_of(spec: str) -> list[tuple[int, int]]:
    """SHAPES, or the ones a comma-separated list of indices names (--shapes 0,2)."""
    return SHAPES if spec == "all" else [SHAPES[int(i)] for i in spec.split(",")]


def int4_cases(shapes, ms, rep_ms: int, dtype: torch.dtype = torch.bfloat16):
    """(K, N, M, x, int4 layer copies, their count, dense ms per layer) for every shape and M of an int4 kernel
    sweep: the layers are built once per shape (and freed after it), x drawn per M in `dtype` (bf16, or fp16), the
    dense F.linear in that dtype timed on it."""
    for k, n in shapes:
        ws, mods, r4, r16 = int4_layer_copies(k, n)
        ws = [w.to(dtype) for w in ws]
        for m in ms:
            x = torch.randn(m, k, dtype=dtype, device="cuda")
            yield k, n, m, x, mods, r4, graph_time(lambda: [F.linear(x, wi) for wi in ws], r16, rep_ms)
        del mods, ws
        torch.cuda.empty_cache()


def bench_kernels(args) -> list[dict]:
    from nnslim.quant.w8a8 import W8A8Linear
    from nnslim.quant.weight_only.modules import WeightOnlyLinear

    torch.manual_seed(0)
    rows = []
    formats = set(args.formats.split(","))
    ms_list = [int(m) for m in args.m.split(",")]
    for k, n in SHAPES:
        lin, codes, scale, zero, spec = int4_parts(k, n)
        w = lin.weight.detach()
        int4 = WeightOnlyLinear.from_codes(lin, codes, scale, zero, spec).cuda()
        fp8 = W8A8Linear.from_linear(lin, "fp8", fast_accum=True).cuda()
        int8 = W8A8Linear.from_linear(lin, "int8").cuda()
        wref4 = int4.dequantized_weight(torch.bfloat16)
        r_bf16 = _copies(k * n * 2)
        r_int4 = _copies(k * n // 2)
        r_8 = _copies(k * n)
        bf16_ws = [w.clone() for _ in range(r_bf16)]
        int4_mods = [int4] + [WeightOnlyLinear.from_codes(lin, codes, scale, zero, spec).cuda() for _ in range(r_int4 - 1)]
        fp8_mods = [fp8] + [W8A8Linear.from_linear(lin, "fp8", fast_accum=True).cuda() for _ in range(r_8 - 1)]
        int8_mods = [int8] + [W8A8Linear.from_linear(lin, "int8").cuda() for _ in range(r_8 - 1)]
        for m in ms_list:
            x = torch.randn(m, k, dtype=torch.bfloat16, device="cuda")
            ref = F.linear(x, w)
            base = graph_time(lambda: [F.linear(x, wi) for wi in bf16_ws], r_bf16)
            row = {"K": k, "N": n, "M": m, "bf16_ms": round(base, 4)}
            if "int4" in formats:
                row.update(_int4_row(int4, int4_mods, r_int4, x, wref4, ref, base, m, args))
            if "fp8" in formats:
                row.update(_fp8_row(fp8, fp8_mods, r_8, x, base))
            if "int8" not in formats:
                print(json.dumps(row), flush=True)
                rows.append(row)
                continue
            ic = int8._candidates(x)
            t8 = {}
            for name in ic:
                if name == "dequant":
                    continue
                try:
                    t8[name] = graph_time(lambda nm=name: [mod._candidates(x)[nm]() for mod in int8_mods], r_8)
                except Exception as e:  # noqa: BLE001
                    print(f"  int8 {name} failed: {str(e).splitlines()[0][:120]}", flush=True)
            if t8:
                best8 = min(t8, key=t8.get)
                row["int8_ms"] = round(t8[best8], 4)
                row["int8_kernel"] = best8
                row["int8_x"] = round(base / t8[best8], 2)
                row["int8_err_vs_ref"] = rel_err(ic[best8](), int8._reference(x))
                if "int_mm" in t8:
                    row["int_mm_x"] = round(base / t8["int_mm"], 2)
            print(json.dumps(row), flush=True)
            rows.append(row)
        del bf16_ws, int4_mods, fp8_mods, int8_mods
        torch.cuda.empty_cache()
    return rows


def _int4_row(int4, int4_mods, reps, x, wref4, ref, base, m, args) -> dict:
    """Every nnslim Triton int4 configuration that applies at this M, torch's tinygemm, best of them."""
    from nnslim.runtime.kernels import triton_int4

    row, times = {}, {}
    legacy = (triton_int4.GEMV_CONFIGS if m == 1 else []) + (triton_int4.GEMM_CONFIGS if m > 1 or args.all else [])
    variants = [(f"triton{_kind(c)}-{i}", c, int4._triton_int4) for i, c in enumerate(legacy)]
    if m <= 4:
        k = x.shape[1]
        variants += [(f"triton-kmajor-{i}", c, int4._triton_int4k) for i, c in enumerate(triton_int4.KMAJOR_CONFIGS)
                     if triton_int4.kmajor_tile(k, int4.group, c["BLOCK_K"]) is not None]
        if triton_int4.perm_tile_words(k, int4.group) is not None:
            variants += [(f"triton-perm-{i}", c, int4._triton_int4p) for i, c in enumerate(triton_int4.PERM_CONFIGS)]
    for name, cfg, fn in variants:
        try:
            err = rel_err(fn(x, cfg), F.linear(x, wref4))
            if err > 1e-2:
                print(f"  {name} M={m}: rel err {err:.2e} vs dequant reference", flush=True)
                continue
            times[f"{name} {cfg}"] = graph_time(lambda c=cfg, f=fn: [f.__func__(mod, x, c) for mod in int4_mods], reps)
        except Exception as e:  # noqa: BLE001
            print(f"  {name} failed: {str(e).splitlines()[0][:120]}", flush=True)
    best = min(times, key=times.get)
    row["int4_triton_ms"] = round(times[best], 4)
    row["int4_triton_cfg"] = best
    row["int4_top"] = {k.split(" ")[0]: round(v, 4) for k, v in sorted(times.items(), key=lambda kv: kv[1])[:6]}
    if "tinygemm" in int4._candidates(x):
        row["int4_tinygemm_ms"] = round(graph_time(lambda: [mod._tinygemm(x) for mod in int4_mods], reps), 4)
        row["tinygemm_err"] = rel_err(int4._tinygemm(x), F.linear(x, wref4))
    row["int4_err"] = rel_err(int4._triton_int4(x), F.linear(x, wref4))
    row["int4_vs_fp_err"] = rel_err(F.linear(x, wref4), ref)
    row["int4_x"] = round(base / min(row.get("int4_tinygemm_ms", 1e9), row["int4_triton_ms"]), 2)
    return row


def _kind(cfg: dict) -> str:
    return "-gemm" if "BLOCK_M" in cfg else "-gemv"


def _fp8_row(fp8, fp8_mods, reps, x, base) -> dict:
    """fp8 W8A8 as the layer runs it (fused Triton per-token quant + _scaled_mm), with and without
    fast accumulation, and the GEMM alone on pre-quantized activations."""
    from nnslim.runtime.kernels.triton_w8a8 import quantize_rows

    row = {}
    fc = fp8._candidates(x)
    for name, key in (("scaled_mm", "fp8"), ("scaled_mm-fastacc", "fp8_fastacc")):
        row[f"{key}_ms"] = round(graph_time(lambda nm=name: [mod._candidates(x)[nm]() for mod in fp8_mods], reps), 4)
        row[f"{key}_x"] = round(base / row[f"{key}_ms"], 2)
        row[f"{key}_err_vs_ref"] = rel_err(fc[name](), fp8._reference(x))
    xq, sx = quantize_rows(x, "fp8")
    row["act_quant_ms"] = round(graph_time(lambda: quantize_rows(x, "fp8"), 1), 4)
    for fast in (False, True):
        gemm = graph_time(lambda f=fast: [torch._scaled_mm(xq, mod.qweight.t(), scale_a=sx[:, None],
                                                           scale_b=mod.wscale[None, :], out_dtype=torch.bfloat16,
                                                           use_fast_accum=f) for mod in fp8_mods], reps)
        row["fp8_gemm_only_fastacc_x" if fast else "fp8_gemm_only_x"] = round(base / gemm, 2)
    return row


def llama(layers: int, device: str):
    from transformers import LlamaConfig, LlamaForCausalLM

    cfg = LlamaConfig(**{**LLAMA7B, "num_hidden_layers": layers})
    torch.manual_seed(0)
    with torch.device(device):
        model = LlamaForCausalLM(cfg).to(torch.bfloat16)
    return model.eval()


def decode_tokens_per_s(model, prompt_len: int, new_tokens: int, fused: bool = False
                        ) -> tuple[float, list[int], float, str, torch.Tensor]:
    """nnslim's StaticDecoder (static KV cache, one decode step in a CUDA graph); also the relative
    error of its prefill logits vs the Hugging Face forward of the same model (a correctness check)."""
    from nnslim.runtime.decode import StaticDecoder

    g = torch.Generator(device="cpu").manual_seed(0)
    prompt = torch.randint(0, model.config.vocab_size, (1, prompt_len), generator=g).cuda()
    dec = StaticDecoder(model, max_len=prompt_len + new_tokens + 8, fused=fused)
    tokens, rate = dec.generate(prompt, new_tokens)
    with torch.no_grad():
        ref = model(input_ids=prompt, use_cache=False).logits[:, -1].float()
        got = StaticDecoder(model, max_len=prompt_len + 8, use_graph=False, fused=fused).forward(
            prompt, torch.arange(prompt_len, device="cuda")).float()
    return rate, tokens[:16], rel_err(got, ref), dec.fused_note, got


def bench_decode(args) -> list[dict]:
    from nnslim.quant.w8a8 import Fp8Config, quantize_w8a8
    from nnslim import Int4RtnConfig, quantize
    from nnslim.runtime.kernels.select import kernel_table

    rows = []
    model = llama(args.layers, "cuda")
    variants = [("bf16", None)] + [(v, v) for v in args.variants.split(",")]
    modes = {"both": [False, True], "on": [True], "off": [False]}[args.fused]
    best_bf16 = None
    # Accuracy reference for the bf16 rows: the same weights run by Hugging Face in fp32.
    import copy

    g = torch.Generator(device="cpu").manual_seed(0)
    prompt = torch.randint(0, model.config.vocab_size, (1, args.prompt), generator=g).cuda()
    with torch.no_grad():
        fp32 = copy.deepcopy(model).float()
        ref32 = fp32(input_ids=prompt, use_cache=False).logits[:, -1].float()
        hf_bf16_err = rel_err(model(input_ids=prompt, use_cache=False).logits[:, -1], ref32)
        del fp32
    torch.cuda.empty_cache()
    for name, kind in variants:
        if kind == "int4":
            model = quantize(model, Int4RtnConfig(group_size=128), inplace=True)
        elif kind == "int4-head":  # lm_head quantized too (what torchao's int4 weight-only does by default)
            del model
            torch.cuda.empty_cache()
            model = quantize(llama(args.layers, "cuda"), Int4RtnConfig(group_size=128, quantize_head=True),
                             inplace=True)
        elif kind == "fp8":
            model = llama(args.layers, "cuda")
            model = quantize_w8a8(model, Fp8Config(), inplace=True)
        elif kind is not None:
            raise SystemExit(f"unknown variant {kind}")
        torch.cuda.empty_cache()
        for fused in modes:
            runs = [decode_tokens_per_s(model, args.prompt, args.new_tokens, fused) for _ in range(args.runs)]
            tps = statistics.median(r[0] for r in runs)
            if name == "bf16":
                best_bf16 = max(best_bf16 or 0.0, tps)
            row = {"variant": name, "fused": fused, "tok_s": round(tps, 1), "ms_per_token": round(1000 / tps, 2),
                   "x_best_bf16": round(tps / best_bf16, 2), "runs": [round(r[0], 1) for r in runs],
                   "prefill_logits_rel_err_vs_hf": round(runs[0][2], 5), "first_tokens": runs[0][1][:8],
                   "gpu_mem_GB": round(torch.cuda.memory_allocated() / 2**30, 2), "notes": [runs[0][3]]}
            if name == "bf16":  # both bf16 paths and HF's own bf16 forward against the fp32 forward
                row["prefill_rel_err_vs_fp32"] = round(rel_err(runs[0][4], ref32), 5)
                row["hf_bf16_rel_err_vs_fp32"] = round(hf_bf16_err, 5)
            print(json.dumps(row), flush=True)
            rows.append(row)
    print(json.dumps({"kernel_choices": kernel_table()}), flush=True)
    if args.profile:
        profile_step(model, args.prompt)
    return rows


HBM_BYTES_PER_S = {"H200": 4.8e12, "H100": 3.35e12}  # datasheet bandwidths: the memory floor of a decode step


@functools.lru_cache(maxsize=None)
def hbm_bytes_per_s() -> float:
    """The datasheet HBM bandwidth of GPU 0 (H100 SXM 3.35 TB/s, H200 4.8 TB/s; others: the H200's, flagged)."""
    name = torch.cuda.get_device_name(0)
    for key, bw in HBM_BYTES_PER_S.items():
        if key in name:
            return bw
    print(f"# no datasheet bandwidth for {name}: floors use the H200's 4.8 TB/s", flush=True)
    return HBM_BYTES_PER_S["H200"]


def _weight_bytes(model) -> int:
    """Bytes a decode step reads for the weights: every parameter and buffer of the decoder layers, the final
    norm and lm_head (the embedding is read one row per token: left out)."""
    skip = {id(t) for t in model.model.embed_tokens.parameters()}
    tensors = {id(t): t for t in [*model.parameters(), *model.buffers()] if id(t) not in skip}
    head = model.lm_head.weight if hasattr(model.lm_head, "weight") else None
    if head is not None and id(head) in skip:  # tied head: read once per step after all
        tensors[id(head)] = head
    return sum(t.numel() * t.element_size() for t in tensors.values())


def bench_batched(args) -> list[dict]:
    """Fused StaticDecoder at batch sizes and KV-cache formats: tokens/s over the batch, ms per step, and the
    memory floor of a step (weights + the KV cache read at the mean context, at hbm_bytes_per_s())."""
    from nnslim import Int4RtnConfig, quantize
    from nnslim.quant.w8a8 import Fp8Config, quantize_w8a8
    from nnslim.runtime.decode import StaticDecoder
    from nnslim.runtime.kernels.select import kernel_table

    rows = []
    for name in ["bf16"] + [v for v in args.variants.split(",") if v]:
        model = llama(args.layers, "cuda")
        if name == "int4":
            model = quantize(model, Int4RtnConfig(group_size=128), inplace=True)
        elif name in ("fp8", "fp8-no-norm-quant"):  # the second: each linear quantizes its own input
            model = quantize_w8a8(model, Fp8Config(), inplace=True)
        elif name != "bf16":
            raise SystemExit(f"unknown variant {name}")
        wbytes = _weight_bytes(model)
        cfg = model.config
        kvh, hd = cfg.num_key_value_heads, cfg.hidden_size // cfg.num_attention_heads
        for b in [int(v) for v in args.batch.split(",")]:
            ref_tokens = None
            for kv in args.kv.split(","):
                g = torch.Generator(device="cpu").manual_seed(0)
                prompt = torch.randint(0, cfg.vocab_size, (b, args.prompt), generator=g).cuda()
                dec = StaticDecoder(model, max_len=args.prompt + args.new_tokens + 8, fused=True, batch=b, kv_cache=kv,
                                    norm_quant=name != "fp8-no-norm-quant")
                runs = [dec.generate(prompt, args.new_tokens) for _ in range(args.runs)]
                tokens = runs[0][0] if b > 1 else [runs[0][0]]
                rate = statistics.median(r[1] for r in runs)
                ctx = args.prompt + args.new_tokens / 2
                elem = 2 if kv == "model" else 1
                kv_read = b * cfg.num_hidden_layers * 2 * kvh * ctx * (hd * elem + (0 if kv == "model" else 4))
                floor_ms = (wbytes + kv_read) / hbm_bytes_per_s() * 1e3
                step_ms = 1e3 * b / rate
                row = {"variant": name, "batch": b, "kv_cache": kv, "prompt": args.prompt, "new_tokens": args.new_tokens,
                       "tok_s": round(rate, 1), "ms_per_step": round(step_ms, 3), "floor_ms": round(floor_ms, 3),
                       "floor_over_measured": round(floor_ms / step_ms, 3),
                       "floor_TB_s": hbm_bytes_per_s() / 1e12, "weights_GB": round(wbytes / 1e9, 2),
                       "kv_cache_GB": round(dec.cache.nbytes() / 1e9, 2), "runs": [round(r[1], 1) for r in runs]}
                if ref_tokens is None:
                    ref_tokens = tokens
                else:  # greedy agreement with the model-dtype cache (same weights, same prompts)
                    same = sum(x == y for a, c in zip(tokens, ref_tokens) for x, y in zip(a, c))
                    row["agreement_vs_first_kv"] = round(same / sum(len(a) for a in ref_tokens), 3)
                print(json.dumps(row), flush=True)
                rows.append(row)
                del dec
                torch.cuda.empty_cache()
        del model
        torch.cuda.empty_cache()
    print(json.dumps({"kernel_choices": kernel_table()}), flush=True)
    return rows


def profile_step(model, prompt_len: int) -> None:
    """GPU time per kernel of one fused decode step (run eagerly under torch.profiler; the kernels are
    the ones the CUDA graph replays)."""
    from torch.profiler import ProfilerActivity, profile

    from nnslim.runtime.decode import StaticDecoder

    dec = StaticDecoder(model, max_len=prompt_len + 16, use_graph=False, fused=True)
    tok = torch.zeros(1, 1, dtype=torch.long, device="cuda")
    pos = torch.tensor([prompt_len], device="cuda")
    for _ in range(3):
        dec.forward(tok, pos)
    torch.cuda.synchronize()
    with profile(activities=[ProfilerActivity.CUDA]) as prof:
        for _ in range(5):
            dec.forward(tok, pos)
        torch.cuda.synchronize()
    print(prof.key_averages().table(sort_by="cuda_time_total", row_limit=14, max_name_column_width=60))


def bench_gptq(args) -> list[dict]:
    from nnslim import Int4GptqConfig, quantize

    model = llama(args.layers, "cuda").to("cpu")
    torch.cuda.empty_cache()
    size_gb = sum(p.numel() * p.element_size() for p in model.parameters()) / 2**30
    g = torch.Generator().manual_seed(0)
    samples = [{"input_ids": torch.randint(0, 32000, (1, args.seq_len), generator=g)} for _ in range(args.samples)]
    torch.cuda.reset_peak_memory_stats()
    start_alloc = torch.cuda.memory_allocated() / 2**30
    t = time.perf_counter()
    notes = [f"GPU memory allocated before GPTQ: {start_alloc:.2f} GB"]
    quantize(model, Int4GptqConfig(group_size=128, device="cuda", samples=args.samples, seq_len=args.seq_len),
             calibration=samples, inplace=True)  # in place: no second 7B copy
    torch.cuda.synchronize()
    wall = time.perf_counter() - t
    peak = torch.cuda.max_memory_allocated() / 2**30
    import resource

    row = {"layers": args.layers, "samples": args.samples, "seq_len": args.seq_len, "wall_s": round(wall, 1),
           "peak_gpu_GB": round(peak, 2), "bf16_model_GB": round(size_gb, 2),
           "peak_host_rss_GB": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20, 2),
           "peak_over_model": round(peak / size_gb, 3), "notes": notes}
    print(json.dumps(row), flush=True)
    return [row]


def render(path: str) -> None:
    d = json.loads(Path(path).read_text())
    print(f"{d['what']} on {d['machine']}")
    rows = d["rows"]
    if d["what"] == "kernels":
        print("| K x N | M | bf16 ms | int4 g128 best ms (kernel) | int4 vs bf16 | fp8 W8A8 vs bf16: exact accum / "
              "fast accum (GEMM only, fast) | int8 W8A8 vs bf16 (kernel) | torch._int_mm path vs bf16 |")
        print("|---|---|---|---|---|---|---|---|")

        def x(r, key):
            return f"{r[key]:.2f}x" if key in r else "-"

        for r in rows:
            if "int4_triton_ms" in r:
                tg, tr = r.get("int4_tinygemm_ms", float("inf")), r["int4_triton_ms"]
                best = "tinygemm" if tg < tr else "nnslim " + r["int4_triton_cfg"].split(" ")[0]
                int4 = f"{min(tg, tr):.4f} ({best}) | {r['int4_x']:.2f}x"
            else:
                int4 = "- | -"
            fp8 = (f"{x(r, 'fp8_x')} / {x(r, 'fp8_fastacc_x')} ({x(r, 'fp8_gemm_only_x')}, "
                   f"{x(r, 'fp8_gemm_only_fastacc_x')})") if "fp8_x" in r else "-"
            int8 = f"{x(r, 'int8_x')} ({r['int8_kernel']})" if "int8_x" in r else "-"
            print(f"| {r['K']}x{r['N']} | {r['M']} | {r['bf16_ms']:.4f} | {int4} | {fp8} | {int8} | "
                  f"{r.get('int_mm_x', '-')} |")
    else:
        keys = [k for k in rows[0] if k not in ("notes", "first_tokens")]
        print("| " + " | ".join(keys) + " |")
        print("|" + "---|" * len(keys))
        for r in rows:
            print("| " + " | ".join(str(r.get(k)) for k in keys) + " |")
        for r in rows:
            for note in r.get("notes", []):
                print(f"note: {note}")


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("what", choices=["kernels", "decode", "batched", "prefill", "gptq", "render"])
    ap.add_argument("--m", default="1,2,4,8,16,32,128,1024,2048,4096")
    ap.add_argument("--all", action="store_true", help="also try GEMM configs at M=1")
    ap.add_argument("--profile", action="store_true", help="decode: GPU time per kernel of one fused step")
    ap.add_argument("--formats", default="int4,fp8,int8", help="kernels: which of int4,fp8,int8 to time")
    ap.add_argument("--fused", default="both", choices=["both", "on", "off"],
                    help="decode: StaticDecoder with the fused Triton decode path, without, or both")
    ap.add_argument("--layers", type=int, default=32)
    ap.add_argument("--prompt", type=int, default=128)
    ap.add_argument("--new-tokens", type=int, default=256)
    ap.add_argument("--prompt-lens", default="128,512,2048", help="prefill: prompt lengths")
    ap.add_argument("--graph", action="store_true", help="prefill: replay each forward from a CUDA graph (no host "
                    "overhead: what the kernels alone give)")
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--variants", default="int4")
    ap.add_argument("--batch", default="1,8,32", help="batched: batch sizes")
    ap.add_argument("--kv", default="model,int8", help="batched: KV-cache formats (model, int8, fp8)")
    ap.add_argument("--samples", type=int, default=128)
    ap.add_argument("--seq-len", type=int, default=2048)
    ap.add_argument("--json", default=None, help="also write the rows here")
    ap.add_argument("--attention", default=None,
                    help="decode attention launches: the JSON of benchmarks/gpu_decode_attention.py (its best per "
                         "cache format replaces triton_decode.ATTENTION_CONFIG for this run)")
    args = ap.parse_args()
    if args.what == "render":
        if not args.json:
            raise SystemExit("render needs --json FILE")
        return render(args.json)
    if not torch.cuda.is_available():
        raise SystemExit("this benchmark needs a CUDA GPU (run it through the device machine)")
    print(f"# {args.what} on {machine()}, {time.strftime('%Y-%m-%d %H:%M')}", flush=True)
    if args.attention:
        from nnslim.runtime.kernels import triton_decode

        for row in json.loads(Path(args.attention).read_text())["rows"]:
            fmt = {"bf16": "model"}.get(row["cache"], row["cache"])
            triton_decode.ATTENTION_CONFIG[fmt] = row["best_config"]
        print(f"# decode attention launches: {triton_decode.ATTENTION_CONFIG}", flush=True)
    if args.what == "prefill":  # (its code lives with the prefill profile)
        from gpu_prefill_profile import bench_prefill as bench
    else:
        bench = {"kernels": bench_kernels, "decode": bench_decode, "batched": bench_batched,
                 "gptq": bench_gptq}[args.what]
    rows = bench(args)
    if args.json:
        from nnslim.runtime.kernels.select import kernel_table

        Path(args.json).write_text(json.dumps({"machine": machine(), "what": args.what, "rows": rows,
                                               "kernel_choices": kernel_table()}, indent=1))


if __name__ == "__main__":
    main()
