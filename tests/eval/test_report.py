import json

import numpy as np

from nnslim.eval.latency import Latency, measure_interleaved
from nnslim.eval.report import Report, VariantResult


def _report():
    mk = lambda name, ms, size, acc: VariantResult(name, "torch", "torch", "float32", size, 10,
                                                   {"accuracy": acc}, Latency(ms, ms * 1.2, ms, 5, 8), 1000)
    return Report("digits-cnn", "accuracy", True, 8, None,
                  [mk("baseline", 10.0, 4000, 0.98), mk("fast", 5.0, 1000, 0.97)])


def test_report_schema_and_ratios(tmp_path):
    paths = _report().write(tmp_path)
    data = json.loads(paths["json"].read_text())
    assert [v["name"] for v in data["variants"]] == ["baseline", "fast"]
    for v in data["variants"]:
        assert {"name", "size_bytes", "latency_ms", "metrics"} <= set(v)
        assert isinstance(v["metrics"], dict) and "accuracy" in v["metrics"]
    fast = data["variants"][1]
    assert fast["latency_ms"] == 5.0 and fast["vs_baseline"]["speedup"] == 2.0
    assert fast["vs_baseline"]["size_ratio"] == 0.25
    assert abs(fast["vs_baseline"]["metric_delta"]["accuracy"] + 0.01) < 1e-12
    md = paths["md"].read_text()
    assert "| baseline |" in md and "2.00x" in md
    assert paths["png"].read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "fast" in _report().to_terminal()


def test_single_variant_report_has_no_plot(tmp_path):
    r = _report()
    r.variants = r.variants[:1]
    assert "png" not in r.write(tmp_path)


def test_interleaved_latency_runs_each_call_equally():
    calls = {"a": [], "b": []}
    order = []
    res = measure_interleaved({k: (lambda k=k: (calls[k].append(1), order.append(k))) for k in calls},
                              batch=4, warmup=2, repeats=6)
    assert len(calls["a"]) == len(calls["b"]) == 8 and res["a"].runs == 6
    timed = order[4:]
    assert timed[0::2] != timed[1::2]  # rotated order, not always a then b
    assert all(np.isfinite(r.median_ms) and r.p90_ms >= r.median_ms for r in res.values())
    assert res["a"].throughput == 4 * 1000 / res["a"].median_ms


def test_speedup_against_the_same_runtime_and_noise_flag():
    def mk(name, backend, dtype, ms, p90):
        return VariantResult(name, backend, "onnx", dtype, 1000, 10, {"accuracy": 0.9}, Latency(ms, p90, ms, 5, 8))

    rep = Report("t", "accuracy", True, 8, None,
                 [mk("original float32", "torch", "float32", 10.0, 10.5),
                  mk("original as float32 onnx (onnxruntime)", "onnxruntime", "float32", 12.0, 12.5),
                  mk("int8 (onnxruntime)", "onnxruntime", "int8", 6.0, 9.0)])
    head, rows = rep.rows()
    col = head.index("vs fp32 same runtime")
    assert rows[2][col] == "2.00x" and rows[0][col] == "-"
    assert rows[2][head.index("speed-up")] == "1.67x"
    data = rep.to_dict()
    assert data["variants"][2]["vs_same_runtime_fp32"]["speedup"] == 2.0
    assert rows[2][head.index("latency ms (p90)")].endswith("*") and not rows[1][col - 2].endswith("*")
    assert any("noisy timing (int8 (onnxruntime))" in n for n in rep.render_notes())


def test_compressed_but_not_faster_is_said_outright():
    """A compressed variant that measured no faster than the baseline gets a note naming both ratios; a faster
    one and the float exports of the original get none."""
    def mk(name, backend, dtype, ms, size):
        return VariantResult(name, backend, "onnx", dtype, size, 10, {}, Latency(ms, ms, ms, 5, 8))

    rep = Report("t", "accuracy", True, 8, None,
                 [mk("original float32", "torch", "float32", 10.0, 4000),
                  mk("original as float32 onnx (onnxruntime)", "onnxruntime", "float32", 10.4, 4000),
                  mk("int8 (onnxruntime)", "onnxruntime", "int8", 10.8, 1000),
                  mk("int8 (openvino)", "openvino", "int8", 5.0, 1000)])
    notes = [n for n in rep.render_notes() if "not faster" in n]
    assert notes == ["int8 (onnxruntime): not faster than original float32 on this machine (0.93x; 0.96x the float32 "
                     "graph in onnxruntime); its gain here is size (0.25x)"]


def test_deploy_runtime_is_the_fastest_that_computes_the_same():
    """Two runtimes running one graph can disagree (an OpenVINO graph optimization changed a classifier's output
    to cosine 0.93 where ONNX Runtime kept 0.9999): the faster one is chosen only when its metric is as good."""
    from nnslim.pipeline import deploy_runtime

    def row(backend, ms, cos):
        return VariantResult(f"int8 ({backend})", backend, "onnx", "int8", 100, 10, {"cos_mean": cos},
                             Latency(ms, ms, ms, 5, 8), None)

    base = VariantResult("original", "torch", "torch", "float32", 400, 10, {"cos_mean": 1.0},
                         Latency(9.0, 9.0, 9.0, 5, 8), None)
    rep = Report("m", "cos_mean", True, 8, None, [base, row("onnxruntime", 2.0, 0.9999), row("openvino", 1.0, 0.9266)])
    chosen = deploy_runtime(rep, "int8", None)
    assert chosen["name"] == "onnxruntime" and "openvino not chosen: its cos_mean 0.9266 vs 0.9999" in chosen["why"]
    rep.variants[2].metrics["cos_mean"] = 0.9990  # within tolerance: the faster wins
    assert deploy_runtime(rep, "int8", None)["name"] == "openvino"
    ppl = Report("lm", "perplexity", False, 1, 16, [base, row("onnxruntime", 2.0, 0), row("openvino", 1.0, 0)])
    ppl.variants[1].metrics = {"perplexity": 20.0}
    ppl.variants[2].metrics = {"perplexity": 25.0}  # lower is better: 25 is far worse
    assert deploy_runtime(ppl, "int8", None)["name"] == "onnxruntime"
    assert deploy_runtime(rep, "int8", "openvino")["name"] == "openvino"  # --backend decides
