"""Compress a checkpoint larger than half this machine's memory, layer by layer from its shards (issue 19).

  python benchmarks/stream_big.py [--layers 32] [--dir /tmp/nnslim-big] [--method int4-rtn|int4-gptq]
      [--offload DIR] [--device cpu|cuda] [--samples 4 --seq-len 512]

Writes a Llama-7B-shaped checkpoint with random bf16 weights straight to safetensors shards (one per
decoder block, never the whole model in memory; reused when present), then in a fresh process:
`nnslim.load(dir, stream=True, offload_dir=...)`, `nnslim.quantize(..., inplace=True)` (int4 g128, RTN or
GPTQ calibrated on random token ids), `nnslim.save(...)`, and reports the wall time and the peak RSS (and
the peak GPU memory with --device cuda) against the checkpoint's size and its largest block. Loading this
checkpoint whole as nnslim normally does (fp32) would need ~27 GB.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SHAPE = dict(hidden_size=4096, intermediate_size=11008, num_attention_heads=32, num_key_value_heads=32,
             vocab_size=32000, max_position_embeddings=4096)

CHILD = r"""
import json, re, sys, time
import torch, nnslim
from nnslim import Int4GptqConfig, Int4RtnConfig
directory, out, method, offload, device, samples, seq_len = sys.argv[1:8]
def rss(field="VmRSS"):
    return int(re.search(field + r":\s+(\d+)", open("/proc/self/status").read()).group(1)) / 2**20
# Peaks are VmHWM, this process's own: ru_maxrss would carry over the parent's peak through fork + exec.
base = rss()
g = torch.Generator().manual_seed(0)
data = [{"input_ids": torch.randint(0, 32000, (1, int(seq_len)), generator=g)} for _ in range(int(samples))]
cfg = (Int4RtnConfig(group_size=128) if method == "int4-rtn" else
       Int4GptqConfig(group_size=128, device=device, samples=int(samples), seq_len=int(seq_len)))
t = time.perf_counter()
m = nnslim.load(directory, stream=True, offload_dir=offload if offload != "-" else None)
q = nnslim.quantize(m, cfg, calibration=data if method != "int4-rtn" else None, inplace=True)
t_quant = time.perf_counter() - t
quant_peak = rss("VmHWM")
nnslim.save(q, out)
res = {"rss_after_imports_GB": round(base, 2), "peak_rss_quantize_GB": round(quant_peak, 2),
       "peak_rss_GB": round(rss("VmHWM"), 2),
       "quantize_s": round(t_quant, 1), "total_s": round(time.perf_counter() - t, 1)}
if torch.cuda.is_available() and device == "cuda":
    res["peak_gpu_GB"] = round(torch.cuda.max_memory_allocated() / 2**30, 2)
print(json.dumps(res))
"""


def write_checkpoint(d: Path, layers: int) -> None:
    import torch
    import transformers
    from safetensors.torch import save_file

    d.mkdir(parents=True, exist_ok=True)
    cfg = transformers.LlamaConfig(**SHAPE, num_hidden_layers=layers, tie_word_embeddings=False, torch_dtype="bfloat16",
                                   architectures=["LlamaForCausalLM"])
    cfg.save_pretrained(str(d))
    h, f, v = SHAPE["hidden_size"], SHAPE["intermediate_size"], SHAPE["vocab_size"]
    g = torch.Generator().manual_seed(0)

    def rnd(*shape):
        return (torch.randn(*shape, generator=g) * 0.02).to(torch.bfloat16)

    weight_map = {}

    def save(name, tensors):
        save_file(tensors, str(d / name), metadata={"format": "pt"})
        weight_map.update({k: name for k in tensors})

    for i in range(layers):  # one shard at a time: never the whole model in memory
        p = f"model.layers.{i}."
        tensors = {p + n: rnd(*s) for n, s in [("self_attn.q_proj.weight", (h, h)), ("self_attn.k_proj.weight", (h, h)),
                                               ("self_attn.v_proj.weight", (h, h)), ("self_attn.o_proj.weight", (h, h)),
                                               ("mlp.gate_proj.weight", (f, h)), ("mlp.up_proj.weight", (f, h)),
                                               ("mlp.down_proj.weight", (h, f))]}
        tensors[p + "input_layernorm.weight"] = torch.ones(h, dtype=torch.bfloat16)
        tensors[p + "post_attention_layernorm.weight"] = torch.ones(h, dtype=torch.bfloat16)
        save(f"model-{i:05d}.safetensors", tensors)
        del tensors
    save("model-rest.safetensors", {"model.embed_tokens.weight": rnd(v, h), "lm_head.weight": rnd(v, h),
                                    "model.norm.weight": torch.ones(h, dtype=torch.bfloat16)})
    total = sum((d / n).stat().st_size for n in set(weight_map.values()))
    (d / "model.safetensors.index.json").write_text(json.dumps({"metadata": {"total_size": total},
                                                                "weight_map": weight_map}))
    sys.path.insert(0, str(ROOT / "tests"))
    from hf_zoo import _tokenizer_files

    try:
        _tokenizer_files(d)  # (a tokenizer from a packaged testbed; the device machine has none: ids suffice)
    except Exception as e:  # noqa: BLE001
        print(f"no tokenizer files: {e}", file=sys.stderr)


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--layers", type=int, default=32)
    ap.add_argument("--dir", default="/tmp/nnslim-big")
    ap.add_argument("--method", default="int4-rtn", choices=["int4-rtn", "int4-gptq"])
    ap.add_argument("--offload", default=None, help="offload_dir: finished blocks go to disk here")
    ap.add_argument("--device", default="cpu", choices=["cpu", "cuda"], help="where GPTQ runs")
    ap.add_argument("--samples", type=int, default=4)
    ap.add_argument("--seq-len", type=int, default=512)
    args = ap.parse_args()
    d = Path(args.dir) / f"llama7b-shaped-{args.layers}"
    if not (d / "model.safetensors.index.json").is_file():
        t = time.perf_counter()
        write_checkpoint(d, args.layers)
        print(f"checkpoint written in {time.perf_counter() - t:.0f} s", flush=True)
    out = Path(args.dir) / f"int4-{args.layers}"
    if out.exists():
        import shutil

        shutil.rmtree(out)
    env = {**os.environ, "PYTHONPATH": str(ROOT / "src"), "HF_HUB_OFFLINE": "1", "TRANSFORMERS_VERBOSITY": "error"}
    if args.offload:
        Path(args.offload).mkdir(parents=True, exist_ok=True)
    proc = subprocess.run([sys.executable, "-c", CHILD, str(d), str(out), args.method, args.offload or "-", args.device,
                           str(args.samples), str(args.seq_len)], env=env, stdout=subprocess.PIPE, text=True)
    if proc.returncode:
        raise SystemExit(f"the child failed (exit {proc.returncode}); its stderr is above")
    res = json.loads(proc.stdout.strip().splitlines()[-1])
    sizes = {p.name: p.stat().st_size for p in d.glob("*.safetensors")}
    block = 4 * SHAPE["hidden_size"] ** 2 + 3 * SHAPE["hidden_size"] * SHAPE["intermediate_size"]
    res.update({"method": args.method, "offload": bool(args.offload), "device": args.device,
                "calibration": f"{args.samples}x{args.seq_len}" if args.method != "int4-rtn" else None,
                "largest_block_GB": round(block * 2 / 2**30, 2), "layers": args.layers, "checkpoint_GB": round(sum(sizes.values()) / 2**30, 2),
                "largest_shard_GB": round(max(sizes.values()) / 2**30, 2),
                "artifact_GB": round(sum(p.stat().st_size for p in out.glob("*.safetensors")) / 2**30, 2),
                "mem_total_GB": round(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30, 1)})
    print(json.dumps(res))


if __name__ == "__main__":
    main()
