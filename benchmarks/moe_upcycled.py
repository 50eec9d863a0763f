"""BENCHMARKS.md: weight-only quantization of a mixture-of-experts LLM with real weights, on this CPU.

  python benchmarks/moe_upcycled.py [--experts 4] [--top-k 2] [--samples 16] [--methods rtn,gptq,int8]

No MoE checkpoint ships in a PyPI package, so one is made from the real SmolLM2-135M by sparse
upcycling (as Mixtral was from Mistral): every layer's MLP becomes `--experts` experts in transformers'
Mixtral layout (3D `gate_up_proj` / `down_proj`), expert e = the MLP plus Gaussian noise of `--noise`
times each weight's std (so the experts differ), a random router, `--top-k` experts per token (Mixtral
normalizes the routing weights). Measured on the smollm2 testbed's held-out perplexity:
- the dense SmolLM2 and the upcycled MoE, float;
- each nnslim method on the MoE: perplexity, the share of the parameters it quantized, the
  artifact's size (written and loaded back), and the same method on the dense model for reference;
- NNCF's compress_weights (INT4_SYM, same group; the rival that installs here) on the same MoE model:
  what it quantized (its size) and its perplexity.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")

import torch  # noqa: E402

import nnslim  # noqa: E402
from nnslim.io import machine_info  # noqa: E402
from nnslim.runtime.base import TorchRunner  # noqa: E402
from nnslim.testbeds import get_testbed  # noqa: E402
from nnslim.testbeds.smollm2 import CausalLMLogits  # noqa: E402


def upcycle(dense, experts: int, top_k: int, noise: float, seed: int):
    """A MixtralForCausalLM whose experts are noisy copies of `dense`'s (a LlamaForCausalLM) MLPs."""
    import transformers as tf

    c = dense.config
    cfg = tf.MixtralConfig(vocab_size=c.vocab_size, hidden_size=c.hidden_size, intermediate_size=c.intermediate_size,
                           num_hidden_layers=c.num_hidden_layers, num_attention_heads=c.num_attention_heads,
                           num_key_value_heads=c.num_key_value_heads, max_position_embeddings=c.max_position_embeddings,
                           rms_norm_eps=c.rms_norm_eps, rope_parameters=getattr(c, "rope_parameters", None),
                           tie_word_embeddings=c.tie_word_embeddings, num_local_experts=experts,
                           num_experts_per_tok=top_k, head_dim=getattr(c, "head_dim", None),
                           bos_token_id=c.bos_token_id, eos_token_id=c.eos_token_id)
    moe = tf.MixtralForCausalLM(cfg).eval()
    state = {k: v for k, v in dense.state_dict().items() if ".mlp." not in k}
    missing, unexpected = moe.load_state_dict(state, strict=False)
    assert not unexpected, unexpected
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for layer, block in zip(dense.model.layers, moe.model.layers):
            gate_up = torch.cat([layer.mlp.gate_proj.weight, layer.mlp.up_proj.weight])
            down = layer.mlp.down_proj.weight
            for e in range(experts):
                block.mlp.experts.gate_up_proj[e] = gate_up + noise * gate_up.std() * torch.randn(gate_up.shape, generator=g)
                block.mlp.experts.down_proj[e] = down + noise * down.std() * torch.randn(down.shape, generator=g)
            block.mlp.gate.weight.normal_(0, 0.02, generator=g)
    if cfg.tie_word_embeddings:
        moe.tie_weights()
    return moe


def share_quantized(model) -> float:
    from nnslim.graph.modules import is_packed

    packed = sum(m.in_features * m.out_features for m in model.modules() if is_packed(m) and hasattr(m, "in_features"))
    total = packed + sum(p.numel() for n, p in model.named_parameters())
    return packed / total


def _same(a, b, x) -> bool:
    with torch.no_grad():
        return bool(torch.equal(a(x), b(x)))


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--experts", type=int, default=4)
    ap.add_argument("--top-k", type=int, default=2)
    ap.add_argument("--noise", type=float, default=0.05)
    ap.add_argument("--samples", type=int, default=16)
    ap.add_argument("--seq-len", type=int, default=512)
    ap.add_argument("--group", type=int, default=64)
    ap.add_argument("--methods", default="rtn,gptq,int8")
    ap.add_argument("--nncf", action=argparse.BooleanOptionalAction, default=True)
    ap.add_argument("--json", default=None)
    args = ap.parse_args()
    torch.manual_seed(0)
    tb = get_testbed("smollm2")
    dense = tb.load_model()
    calib = tb.calibration(args.samples, seq_len=args.seq_len)
    moe = CausalLMLogits(upcycle(dense.lm, args.experts, args.top_k, args.noise, seed=0)).eval()
    rows = []
    probe = torch.as_tensor(calib[0]["input_ids"])[:, :64]

    def row(variant, model, dt=0.0, **extra):
        t = time.perf_counter()
        r = tb.evaluate(TorchRunner(model))
        rows.append({"variant": variant, "perplexity": r["perplexity"], "gen_agreement": r.get("gen_agreement"),
                     "params": sum(p.numel() for p in model.parameters()), "quant_s": round(dt, 1),
                     "eval_s": round(time.perf_counter() - t, 1), **extra})
        print(json.dumps(rows[-1]), flush=True)

    row("dense fp32", dense)
    row(f"MoE fp32 ({args.experts} experts, top {args.top_k})", moe)
    g = args.group
    configs = {"rtn": (f"int4 g{g} RTN", nnslim.Int4RtnConfig(group_size=g)),
               "gptq": (f"int4 g{g} GPTQ", nnslim.Int4GptqConfig(group_size=g, device="cpu", samples=args.samples,
                                                                 seq_len=args.seq_len)),
               "awq": (f"int4 g{g} AWQ", nnslim.Int4AwqConfig(group_size=g, device="cpu", samples=args.samples,
                                                             seq_len=args.seq_len)),
               "int8": ("int8 per-channel RTN", nnslim.Int8WeightOnlyConfig())}
    with tempfile.TemporaryDirectory() as tmp:
        for name in args.methods.split(","):
            label, cfg = configs[name]
            t = time.perf_counter()
            q = nnslim.quantize(moe, cfg, calibration=calib)
            dt = time.perf_counter() - t
            out = Path(tmp) / name
            nnslim.save(q, out)
            back = nnslim.load(out, model=CausalLMLogits(upcycle(dense.lm, args.experts, args.top_k, args.noise, 0)))
            size = sum(f.stat().st_size for f in out.iterdir() if f.name.endswith(".safetensors"))
            row(f"MoE {label}", back, dt, quantized_share=round(share_quantized(back), 4), file_mb=round(size / 1e6, 1),
                same_as_in_memory=_same(back, q, probe))
            del q, back
            t = time.perf_counter()
            qd = nnslim.quantize(dense, cfg, calibration=calib)
            row(f"dense {label}", qd, time.perf_counter() - t)
            del qd
    if args.nncf:
        import nncf

        t = time.perf_counter()
        example = probe
        try:
            q = nncf.compress_weights(upcycle(dense.lm, args.experts, args.top_k, args.noise, 0).eval(),
                                      mode=nncf.CompressWeightsMode.INT4_SYM, group_size=g,
                                      dataset=nncf.Dataset([{"input_ids": example}]))
            floats = sum(p.numel() for p in q.parameters() if p.is_floating_point() and p.dim() >= 2)
            row(f"MoE NNCF compress_weights INT4_SYM g{g}", CausalLMLogits(q), time.perf_counter() - t,
                float_matrix_params_left=floats)
        except Exception as e:  # recorded, not hidden
            rows.append({"variant": f"MoE NNCF compress_weights INT4_SYM g{g}", "error": f"{type(e).__name__}: {e}"[:300]})
            print(json.dumps(rows[-1]), flush=True)
    info = machine_info()
    print(f"\n# MoE upcycled from SmolLM2-135M ({args.experts} experts, top {args.top_k}, noise {args.noise}), "
          f"{args.samples} x {args.seq_len} calibration tokens, {time.strftime('%Y-%m-%d')}, {info.get('cpu', '?')}")
    print("| variant | perplexity | params | quantized share | file MB | quantize s |")
    print("|---|---|---|---|---|---|")
    for r in rows:
        if "error" in r:
            print(f"| {r['variant']} | error: {r['error'][:120]} | | | | |")
            continue
        print(f"| {r['variant']} | {r['perplexity']:.3f} | {r['params']:,} | {r.get('quantized_share', '-')} | "
              f"{r.get('file_mb', '-')} | {r['quant_s']} |")
    if args.json:
        Path(args.json).write_text(json.dumps({"machine": info, "args": vars(args), "rows": rows}, indent=1))


if __name__ == "__main__":
    main()
