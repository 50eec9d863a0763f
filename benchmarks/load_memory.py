"""Peak host memory of `nnslim.load` of a compressed LLM artifact vs the artifact's size (issue 19).

  python benchmarks/load_memory.py [--hidden 2048 --layers 16 --inter 5632] [--method int4-rtn] [--keep DIR]

Builds a Llama-style model from a config with random weights, saves it as bf16 safetensors, compresses it
with nnslim (`--method`, default int4-rtn g128: a compressed-tensors checkpoint) and loads the artifact in a
fresh process: peak RSS (ru_maxrss) minus the RSS after the imports (torch, transformers, the model's
module, nnslim), against the size of the artifact's weight files.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
CHILD = r"""
import json, re, resource, sys, time
import torch, transformers, nnslim
import transformers.models.llama.modeling_llama  # noqa: F401  (imports are not the load)
def rss():
    return int(re.search(r"VmRSS:\s+(\d+)", open("/proc/self/status").read()).group(1)) / 1024
base = rss()
t = time.perf_counter()
m = nnslim.load(sys.argv[1])
secs = time.perf_counter() - t
peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
print(json.dumps({"rss_after_imports_MB": round(base), "peak_rss_MB": round(peak), "load_added_MB": round(peak - base),
                  "load_s": round(secs, 1), "params": sum(p.numel() for p in m.parameters())}))
"""


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--hidden", type=int, default=2048)
    ap.add_argument("--inter", type=int, default=5632)
    ap.add_argument("--layers", type=int, default=16)
    ap.add_argument("--vocab", type=int, default=32000)
    ap.add_argument("--method", default="int4-rtn")
    ap.add_argument("--keep", default=None, help="work here (kept) instead of a temp dir")
    args = ap.parse_args()
    env = {**os.environ, "PYTHONPATH": str(ROOT / "src"), "HF_HUB_OFFLINE": "1", "TRANSFORMERS_VERBOSITY": "error"}
    work = Path(args.keep or tempfile.mkdtemp(prefix="nnslim-loadmem-"))
    src, out = work / "src", work / "artifact"
    if not (src / "config.json").is_file():
        import torch
        import transformers

        sys.path.insert(0, str(ROOT / "tests"))
        from hf_zoo import _tokenizer_files

        torch.manual_seed(0)
        cfg = transformers.LlamaConfig(hidden_size=args.hidden, intermediate_size=args.inter,
                                       num_hidden_layers=args.layers, num_attention_heads=args.hidden // 128,
                                       num_key_value_heads=max(1, args.hidden // 512), vocab_size=args.vocab,
                                       tie_word_embeddings=False)
        with torch.device("cpu"):
            transformers.LlamaForCausalLM(cfg).to(torch.bfloat16).save_pretrained(str(src))
        _tokenizer_files(src)
        del torch, transformers
    if not (out / "nnslim.json").is_file():
        cmd = [sys.executable, "-m", "nnslim.cli", "compress", "--model", str(src), "--method", args.method,
               "--set", "group_size=128", "--out", str(out), "--no-report", "--overwrite"]
        t = time.perf_counter()
        subprocess.run(cmd, check=True, env=env)
        print(f"compress: {time.perf_counter() - t:.0f} s", flush=True)
    files = json.loads((out / "nnslim.json").read_text()).get("files", [])
    size = sum((out / f).stat().st_size for f in files if f.endswith(".safetensors"))
    src_size = sum(p.stat().st_size for p in src.glob("*.safetensors"))
    res = json.loads(subprocess.run([sys.executable, "-c", CHILD, str(out)], check=True, env=env,
                                    capture_output=True, text=True).stdout.strip().splitlines()[-1])
    res.update({"method": args.method, "source_bf16_MB": round(src_size / 2**20), "artifact_MB": round(size / 2**20),
                "load_added_over_artifact": round(res["load_added_MB"] / (size / 2**20), 2)})
    print(json.dumps(res))


if __name__ == "__main__":
    main()
