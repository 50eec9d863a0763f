#!/usr/bin/env bash
# BENCHMARKS.md 8b: the int8 comparison (benchmarks/int8_cpu.py) on the device machine's host CPU, which has
# the int8 dot-product instructions (AVX512-VNNI / AMX) that the dev machine lacks. Run through the device
# tool from the repo root, carrying .whl (filled by `bash benchmarks/device_setup.sh prepare`):
#   bash benchmarks/device_cpu_int8.sh
# The MiniLM-shaped encoder is built from all-MiniLM-L6-v2's own config with random weights (its 90 MB of
# weights cannot travel): latency ratios are the point; fidelity is of that random model.
set -euo pipefail
source benchmarks/device_setup.sh  # CPU facts, carried wheels, PYTHONPATH
OUT=${OUT:-build/device-int8}
random_model BertModel .whl/minilm /tmp/minilm-shaped
python3 -c "import nnslim.io as i; print(i.machine_info())"
for threads in ${THREADS:-16}; do
  echo "== threads $threads =="
  OMP_NUM_THREADS=$threads python3 benchmarks/int8_cpu.py --testbeds ${TESTBEDS:-/tmp/minilm-shaped digits-cnn} --repeats 10 \
    --out "$OUT/t$threads" 2>&1 | grep -v -E "Loading weights|it/s\]"
done
# MiniLM-shaped: do nnslim's int8 graph and NNCF's compile to the same OpenVINO layers here (precisions per
# layer type), and which is faster in an interleaved A/B (ov_symmetric_acts.py also times a symmetric-int8 copy).
if [ -d "$OUT/t${THREADS:-16}/minilm-shaped/nncf-int8" ]; then
  d="$OUT/t${THREADS:-16}/minilm-shaped"
  python3 benchmarks/ov_runtime_precisions.py "$d/nnslim-int8/model.onnx" "$d/nncf-int8/nncf_ov.xml"
  python3 benchmarks/ov_symmetric_acts.py "$d/nnslim-int8/model.onnx" "$d/nncf-int8/nncf_ov.xml" --batch 32 --rounds 8
  python3 benchmarks/ov_layer_profile.py "$d/nnslim-int8/model.onnx" "$d/nncf-int8/nncf_ov.xml" --batch 32 --runs 8
fi
