"""Run by the training tests in a child process (torchrun or a plain interpreter)."""
import sys
from pathlib import Path

import torch
from safetensors.torch import save_file

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
import nnslim  # noqa: E402
from zoo import SlowMLP, mlp_data  # noqa: E402

out, ckpt, delay, steps = sys.argv[1], sys.argv[2], float(sys.argv[3]), int(sys.argv[4])
torch.set_num_threads(1)
teacher = SlowMLP()
student = SlowMLP(delay)
with torch.no_grad():
    student.net[0].weight.mul_(0.5)
cfg = nnslim.DistillConfig(steps=steps, batch_size=16, lr=1e-2, checkpoint_dir=ckpt if ckpt != "-" else None,
                           checkpoint_every=10, backend="gloo")
trained = nnslim.distill(student, teacher, data=mlp_data(), config=cfg)
if nnslim.distillation.distributed.is_main():
    save_file({k: v.contiguous() for k, v in trained.state_dict().items()}, out)
