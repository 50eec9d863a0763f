"""Issue 15's matrix: Hugging Face models of every supported task (small, random weights, built from configs
and saved with save_pretrained + a tokenizer) x {int8, int4-rtn, prune-structured, onnx}, each through the
CLI, then each artifact reloaded by its ecosystem's own loader with no nnslim code and compared with
nnslim's load of the same artifact.

  python benchmarks/hf_ecosystem.py [--out DIR] [--kinds t5,bart]

Loaders: transformers `Auto*.from_pretrained` (formats `hf` and `compressed-tensors`), onnxruntime with
the tokenizer / config found beside `model.onnx` (format `onnx`; an encoder-decoder: its encoder then its first
decoder, as Optimum lays them out); `torch` = nnslim's own layout (only
nnslim loads it). "max |diff|" is the largest absolute difference between the two loaders' outputs on
the same inputs; "-" where there is no second loader.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))
sys.path.insert(0, str(ROOT / "tests"))
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
os.environ.setdefault("NNSLIM_PROGRESS", "0")

import numpy as np  # noqa: E402
import torch  # noqa: E402

import nnslim  # noqa: E402
from hf_zoo import MORE, SPEECH, TASKS, WIDER, _build  # noqa: E402
from nnslim.cli import main as cli  # noqa: E402

METHODS = {"int8": ["--method", "int8"], "int4-rtn": ["--method", "int4-rtn", "--set", "group_size=32"],
           "prune-structured": ["--method", "prune-structured", "--set", "ratio=0.5"], "onnx": ["--method", "onnx"],
           # not in the default set: int4 deployed as ONNX (MatMulNBits), for models whose int4 has no
           # compressed-tensors form (GPT-2's Conv1D)
           "int4-onnx": ["--recipe", str(ROOT / "examples" / "int4_onnx_llm.yaml")],
           # W8A8 (compressed-tensors int-quantized / float-quantized for transformers / vLLM)
           "int8-w8a8": ["--method", "int8-w8a8"], "fp8": ["--method", "fp8"],
           # AWQ with its scales folded into norms / producers (a plain compressed-tensors checkpoint)
           "int4-awq": ["--method", "int4-awq", "--set", "group_size=32", "--set", "samples=8", "--set", "seq_len=64"],
           # unstructured pruning (the float artifact transformers loads; MoE experts joined back into 3D)
           "wanda": ["--method", "wanda", "--set", "samples=4", "--set", "seq_len=64"]}
DEFAULT_METHODS = ("int8", "int4-rtn", "prune-structured", "onnx")
NEWER = ("qwen3", "gemma2", "gemma3", "olmo2", "granite", "smollm3", "stablelm", "modernbert-cls", "mobilenetv2-cls",
         "efficientnet-cls", "regnet-cls", "dinov2-cls", "beit-cls")  # added to MORE on 2026-12-06
MOE = ("mixtral", "qwen2moe", "qwen3moe", "gptoss")  # added on 2026-12-07: experts as 3D tensors
VISION_LANGUAGE = ("llava", "gemma3-vl")  # 2026-12-08: image-text-to-text
MULTIPLE_CHOICE = ("bert-mc", )  # 2026-12-08
NEW_TASKS = ("bert-mlm", "roberta-mlm", "segformer", "detr", "yolos", "dinov2", "t5-encoder")  # 2026-12-07: fill-mask,
# segmentation, detection,
# image backbones and encoder-only T5 as feature extraction
AUTO = {"causal-lm": "AutoModelForCausalLM", "sequence-classification": "AutoModelForSequenceClassification",
        "token-classification": "AutoModelForTokenClassification",
        "question-answering": "AutoModelForQuestionAnswering", "feature-extraction": "AutoModel",
        "image-classification": "AutoModelForImageClassification", "seq2seq": "AutoModelForSeq2SeqLM",
        "speech-seq2seq": "AutoModelForSpeechSeq2Seq", "ctc": "AutoModelForCTC",
        "audio-classification": "AutoModelForAudioClassification", "fill-mask": "AutoModelForMaskedLM",
        "semantic-segmentation": "AutoModelForSemanticSegmentation",
        "object-detection": "AutoModelForObjectDetection", "depth-estimation": "AutoModelForDepthEstimation",
        "image-text-to-text": "AutoModelForImageTextToText", "multiple-choice": "AutoModelForMultipleChoice"}


def _inputs(task: str, out: Path) -> dict[str, np.ndarray]:
    config = json.loads((out / "config.json").read_text())
    rng = np.random.default_rng(0)
    if task == "speech-seq2seq":  # log-mel features of the model's window, the decoder on a few tokens
        start = config["decoder_start_token_id"]
        return {"input_features": rng.standard_normal(
                    (2, config["num_mel_bins"], 2 * config["max_source_positions"])).astype(np.float32) * 0.5,
                "decoder_input_ids": np.array([[start, 5, 6, 7]] * 2, np.int64)}
    if task == "image-text-to-text":  # the artifact's own processor: one image and a prompt in its chat template
        from transformers import AutoProcessor

        proc = AutoProcessor.from_pretrained(str(out))
        chat = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "What does it show?"}]}]
        image = (rng.random((48, 40, 3)) * 255).astype(np.uint8)
        enc = proc(images=[image], text=[proc.apply_chat_template(chat, add_generation_prompt=True, tokenize=False)],
                   return_tensors="np")
        return {k: np.asarray(v) for k, v in enc.items()}
    if task in ("ctc", "audio-classification"):  # 1 s of normalized waveform
        return {"input_values": rng.standard_normal((2, 16000)).astype(np.float32)}
    if task in ("image-classification", "semantic-segmentation", "object-detection") or not (out / "tokenizer_config.json").is_file():
        # images of the size nnslim's testbed reads (config, else preprocessor, else 224)
        from nnslim.testbeds.classifier import _image_size, _read_json

        size = _image_size(config, _read_json(out / "preprocessor_config.json"))[0]
        return {"pixel_values": np.random.default_rng(0).standard_normal((2, 3, size, size)).astype(np.float32)}
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(out))  # the artifact's own tokenizer
    enc = tok(["Compressed models must stay faithful.", "A second, longer sentence about the weights."],
              padding=True, return_tensors="np")
    if task == "multiple-choice":  # [batch, choices, seq]: one context, three endings, as a tokenizer pairs them
        ends = ["ends well.", "goes on for a while longer.", "stops."]
        enc = tok(["The story"] * 3, ends, padding=True, return_tensors="np")
        return {k: enc[k].astype(np.int64)[None] for k in ("input_ids", "attention_mask", "token_type_ids") if k in enc}
    feed = {"input_ids": enc["input_ids"].astype(np.int64)}
    if task != "causal-lm":
        feed["attention_mask"] = enc["attention_mask"].astype(np.int64)
    if task == "seq2seq":  # the decoder teacher-forced on the start token then the text's first tokens
        start = json.loads((out / "config.json").read_text())["decoder_start_token_id"]
        feed["decoder_input_ids"] = np.concatenate([np.full((2, 1), start), feed["input_ids"][:, :5]], 1)
    return feed


def _empty(graph_input, feed: dict[str, np.ndarray]) -> np.ndarray:
    """What a decoder exported with its KV cache takes on a first run, as Optimum feeds it: a mask of ones,
    positions 0..n-1 and an empty past [batch, heads, 0, head_dim]."""
    ids = feed["input_ids"]
    if graph_input.name == "attention_mask":
        return np.ones_like(ids)
    if graph_input.name == "position_ids":
        return np.broadcast_to(np.arange(ids.shape[1]), ids.shape).astype(np.int64)
    if graph_input.name.startswith("past_key_values."):
        _, heads, _, head_dim = graph_input.shape
        return np.zeros((ids.shape[0], heads, 0, head_dim), np.float32)
    raise KeyError(graph_input.name)


def _theirs(fmt: str, task: str, out: Path, feed: dict[str, np.ndarray]) -> np.ndarray | None:
    if fmt in ("hf", "compressed-tensors"):
        import transformers

        if task == "feature-extraction":  # loaded by its own class (T5EncoderModel, Dinov2Model); nnslim's output
            from nnslim.testbeds.tasks import feature_class  # is the pooled embedding, not last_hidden_state

            feature_class(json.loads((out / "config.json").read_text())).from_pretrained(str(out))
            return None
        model = getattr(transformers, AUTO[task]).from_pretrained(str(out)).eval()
        with torch.no_grad():  # float inputs (pixels) in the checkpoint's dtype, as a user of an fp16 model feeds them
            res = model(**{k: torch.as_tensor(v).to(model.dtype) if np.issubdtype(v.dtype, np.floating)
                           else torch.as_tensor(v) for k, v in feed.items()})
        if task == "question-answering":
            return torch.stack([res.start_logits, res.end_logits], -1).float().numpy()
        if task == "depth-estimation":
            return res.predicted_depth.float().numpy()
        return res.logits.float().numpy()
    if fmt == "onnx":
        import onnxruntime as ort

        def run_file(name, inputs):
            sess = ort.InferenceSession(str(out / name), providers=["CPUExecutionProvider"])
            feed = {i.name: inputs[i.name] if i.name in inputs else _empty(i, inputs) for i in sess.get_inputs()}
            return sess.run(None, feed)[0]

        if task == "speech-seq2seq":  # Optimum's speech layout: no encoder mask
            states = run_file("encoder_model.onnx", feed)
            return run_file("decoder_model.onnx", {"input_ids": feed["decoder_input_ids"],
                                                   "encoder_hidden_states": states})
        if task == "seq2seq":  # Optimum's layout: the encoder, then the first decoder on the whole target
            states = run_file("encoder_model.onnx", feed)
            return run_file("decoder_model.onnx", {"encoder_attention_mask": feed["attention_mask"],
                                                   "input_ids": feed["decoder_input_ids"],
                                                   "encoder_hidden_states": states})
        return run_file("model.onnx", feed)
    return None


def run(out_root: Path, kinds: list[str], methods=DEFAULT_METHODS) -> list[dict]:
    from nnslim.runtime import make_runner

    zoo_dir = out_root / "zoo"
    zoo_dir.mkdir(parents=True, exist_ok=True)
    rows = []
    for kind, task in {**TASKS, **MORE, **SPEECH}.items():
        if kind not in kinds:
            continue
        model_dir = _build(kind, zoo_dir)
        for method in methods:
            out = out_root / f"{kind}-{method}"
            t0 = time.perf_counter()
            try:  # an uncaught exception is a bug to report, not the end of the matrix
                code, crash = cli(["compress", "--model", str(model_dir), *METHODS[method], "--out", str(out),
                                   "--overwrite", "--no-report"]), None
            except Exception as e:  # noqa: BLE001
                code, crash = "crash", f"{type(e).__name__}: {str(e)[:300]}"
            row = {"model": kind, "task": task, "method": method, "exit": code,
                   "seconds": round(time.perf_counter() - t0, 1)}
            if crash:
                row["crash"] = crash
            if code == 0:
                meta = json.loads((out / "nnslim.json").read_text())
                row["format"] = meta["format"]
                feed = _inputs(task, out)
                ours = make_runner(nnslim.load(out))(feed)
                theirs = _theirs(meta["format"], task, out, feed)
                row["loader"] = {"hf": "transformers", "compressed-tensors": "transformers + compressed-tensors",
                                 "onnx": "onnxruntime (tokenizer from the dir)"}.get(meta["format"], "nnslim only")
                row["max_diff"] = None if theirs is None else float(np.abs(np.asarray(ours) - theirs).max())
                row["absolute_paths"] = str(out_root) in (out / "nnslim.json").read_text()
            rows.append(row)
            print(json.dumps(row), flush=True)
    return rows


def table(rows: list[dict]) -> str:
    lines = ["| model | task | method | exit | format | loaded by | max abs diff vs nnslim.load | s |",
             "|---|---|---|---|---|---|---|---|"]
    for r in rows:
        diff = "-" if r.get("max_diff") is None else f"{r['max_diff']:.1e}"
        lines.append(f"| {r['model']} | {r['task']} | {r['method']} | {r['exit']} | {r.get('format', '-')} | "
                     f"{r.get('loader', '-')} | {diff} | {r['seconds']} |")
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", default=None, help="work dir (default: a temp dir)")
    ap.add_argument("--kinds", default=",".join(TASKS), help=f"comma-separated models of tests/hf_zoo.py "
                                                             f"(default: the tests' set: {','.join(TASKS)}); "
                                                             f"'more': {','.join(MORE)}; 'newer': "
                                                             f"{','.join(NEWER)}; 'moe': {','.join(MOE)}; "
                                                             f"'speech': {','.join(SPEECH)}; 'tasks': {','.join(NEW_TASKS)}; "
                                                             f"'wider': {','.join(WIDER)}")
    ap.add_argument("--methods", default=",".join(DEFAULT_METHODS), help=f"comma-separated, of {','.join(METHODS)}")
    args = ap.parse_args()
    unknown = sorted(set(args.methods.split(",")) - set(METHODS))
    if unknown:
        ap.error(f"--methods {','.join(unknown)} not allowed; allowed: {', '.join(METHODS)}")
    if args.kinds == "more":
        args.kinds = ",".join(MORE)
    elif args.kinds == "newer":
        args.kinds = ",".join(NEWER)
    elif args.kinds == "moe":
        args.kinds = ",".join(MOE)
    elif args.kinds == "tasks":
        args.kinds = ",".join(NEW_TASKS)
    elif args.kinds == "wider":
        args.kinds = ",".join(WIDER)
    elif args.kinds == "speech":
        args.kinds = ",".join(SPEECH)
    elif args.kinds == "vision-language":
        args.kinds = ",".join(VISION_LANGUAGE)
    elif args.kinds == "multiple-choice":
        args.kinds = ",".join(MULTIPLE_CHOICE)
    out = Path(args.out) if args.out else Path(tempfile.mkdtemp(prefix="nnslim-hf-"))
    print(f"command: python benchmarks/hf_ecosystem.py --kinds {args.kinds} --methods {args.methods}; "
          f"date {time.strftime('%Y-%m-%d')}; "
          f"torch {torch.__version__}")
    rows = run(out, args.kinds.split(","), args.methods.split(","))
    print(table(rows))
    for r in rows:
        if r.get("crash"):
            print(f"crash (a bug: not a one-line error): {r['model']} {r['method']}: {r['crash']}")


if __name__ == "__main__":
    main()
