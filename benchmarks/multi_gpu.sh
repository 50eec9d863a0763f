#!/usr/bin/env bash
# Issue 18 in one command on a machine with 2+ GPUs (the device tool's nvidia-h200-x2 / nvidia-h100-x2):
#   OUT=/tmp/mgpu bash benchmarks/multi_gpu.sh [LAYERS HIDDEN STEPS]
# 1. QAT + KD and KD alone under torchrun with DDP over NCCL on 1 and 2 GPUs: steps/s (scaling) and the
#    held-out KL of the trained student (must match within float summation order);
# 2. a 2-GPU QAT run killed after its step-20 checkpoint, resumed on 1 GPU: the same model as an
#    uninterrupted 1-GPU run;
# 3. GPTQ of 7B-shaped blocks on 1 vs 2 GPUs (benchmarks/gpu_gptq_spread.py);
# 4. the refusals: --nproc_per_node above the GPUs present, gpus=3 on 2 GPUs.
set -u
cd "$(dirname "$0")/.."
OUT=${OUT:-/tmp/mgpu}
mkdir -p "$OUT"
LAYERS=${1:-16}; HIDDEN=${2:-2048}; STEPS=${3:-20}
export PYTHONPATH=$PWD/src:$PWD/tests NNSLIM_PROGRESS=0
TR="python3 -m torch.distributed.run --master_port 29533"
nvidia-smi -L | tee "$OUT/gpus.txt"
for mode in qat kd; do
  for n in 1 2; do
    echo "== $mode on $n GPU(s)"
    $TR --nproc_per_node $n benchmarks/gpu_ddp.py --layers $LAYERS --hidden $HIDDEN --steps $STEPS --batch 8 \
      --mode $mode --save /tmp/mgpu-$mode-$n.safetensors 2>&1 | grep -v Warning | tail -4
  done
done
echo "== resume: 2 GPUs killed after the step-20 checkpoint, resumed on 1 GPU, vs 1 GPU uninterrupted (40 steps)"
rm -rf /tmp/mgpu-ck
setsid $TR --nproc_per_node 2 benchmarks/gpu_ddp.py --layers $LAYERS --hidden $HIDDEN --steps 40 --batch 8 \
  --checkpoint-dir /tmp/mgpu-ck --checkpoint-every 10 > "$OUT/killed.log" 2>&1 &
pid=$!
for _ in $(seq 1 1200); do [ -d /tmp/mgpu-ck/step-00000020 ] && break; kill -0 $pid 2>/dev/null || break; sleep 0.5; done
kill -9 -- -$pid 2>/dev/null; wait $pid 2>/dev/null
ls /tmp/mgpu-ck
$TR --nproc_per_node 1 benchmarks/gpu_ddp.py --layers $LAYERS --hidden $HIDDEN --steps 40 --batch 8 \
  --checkpoint-dir /tmp/mgpu-ck --save /tmp/mgpu-resumed.safetensors 2>&1 | grep -v Warning | tail -3
$TR --nproc_per_node 1 benchmarks/gpu_ddp.py --layers $LAYERS --hidden $HIDDEN --steps 40 --batch 8 \
  --save /tmp/mgpu-straight.safetensors 2>&1 | grep -v Warning | tail -3
python3 - <<'PY'
from safetensors.torch import load_file
for a, b, what in [("/tmp/mgpu-qat-1", "/tmp/mgpu-qat-2", "qat 1 vs 2 GPUs"), ("/tmp/mgpu-kd-1", "/tmp/mgpu-kd-2", "kd 1 vs 2 GPUs"),
                   ("/tmp/mgpu-straight", "/tmp/mgpu-resumed", "2-GPU checkpoint resumed on 1 GPU vs 1 GPU straight")]:
    x, y = load_file(a + ".safetensors"), load_file(b + ".safetensors")
    rel = {k: float((x[k] - y[k]).norm() / x[k].norm().clamp(min=1e-12)) for k in x}
    q = [v for k, v in rel.items() if "quantizer" in k]  # LSQ scales: Adam turns float-order noise into steps
    w = [v for k, v in rel.items() if "quantizer" not in k]
    print(f"{what}: max relative difference of the weights {max(w):.2e} ({len(w)} tensors)" +
          (f", of the quantizer scales {max(q):.2e} ({len(q)})" if q else ""))
PY
echo "== GPTQ spread"
python3 benchmarks/gpu_gptq_spread.py --gpus 2 2>&1 | grep -v Warning | tail -4
echo "== the CLI under torchrun (NCCL): int8 QAT + KD of digits-cnn (scikit-learn's digits: no download), each rank on its GPU"
printf 'seed: 0\nsteps:\n  - {method: qat}\n  - {method: distill, steps: 200, batch_size: 64, device: cuda}\n' > /tmp/mgpu-recipe.yaml
rm -rf /tmp/mgpu-cli
$TR --nproc_per_node 2 -m nnslim compress --model digits-cnn --recipe /tmp/mgpu-recipe.yaml --out /tmp/mgpu-cli \
  2>&1 | grep -v Warning | tail -25
python3 -c "import json; print([n for n in json.load(open('/tmp/mgpu-cli/nnslim.json'))['notes'] if 'process' in n])"
echo "== refusals"
$TR --nproc_per_node 9 benchmarks/gpu_ddp.py --steps 1 2>&1 | grep -m1 "nproc_per_node\|GPUs" ; echo "exit ${PIPESTATUS[0]}"
python3 -c "
import torch, nnslim
try:
    nnslim.quantize(torch.nn.Linear(4, 4), nnslim.Int4GptqConfig(gpus=torch.cuda.device_count() + 1))
except nnslim.NnslimError as e:
    print('refused:', e)
"
