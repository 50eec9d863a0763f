"""digits-cnn: a CNN trained deterministically on scikit-learn's 8x8 digits; metric: top-1 accuracy."""
from __future__ import annotations

import hashlib
import inspect

import numpy as np
import torch
from torch import nn

from ..io import cache_dir
from ..progress import progress
from ..progress import warn
from .base import Testbed

EVAL_FRACTION = 0.3
SPLIT_SEED = 0
TRAIN_SEED = 0
EPOCHS = 30


class DigitsCNN(nn.Module):
    """~0.3M parameters: sized so that convolution compute, not call overhead, dominates latency."""

    def __init__(self, width: int = 32, n_classes: int = 10):
        super().__init__()
        w = width

        def block(cin, cout):
            return [nn.Conv2d(cin, cout, 3, padding=1, bias=False), nn.BatchNorm2d(cout), nn.ReLU()]

        self.features = nn.Sequential(*block(1, w), *block(w, 2 * w), nn.MaxPool2d(2),
                                      *block(2 * w, 4 * w), *block(4 * w, 4 * w), nn.MaxPool2d(2))
        self.classifier = nn.Sequential(nn.Flatten(), nn.Linear(4 * w * 2 * 2, 128), nn.ReLU(),
                                        nn.Linear(128, n_classes))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.features(x))


def digits_data() -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """(x_calib, y_calib, x_eval, y_eval); images float32 [N, 1, 8, 8] in [0, 1]. Disjoint splits."""
    from sklearn.datasets import load_digits

    d = load_digits()
    x = (d.images.astype(np.float32) / 16.0)[:, None]
    y = d.target.astype(np.int64)
    order = np.random.default_rng(SPLIT_SEED).permutation(len(x))
    n_eval = int(round(EVAL_FRACTION * len(x)))
    ev, cal = np.sort(order[:n_eval]), np.sort(order[n_eval:])
    return x[cal], y[cal], x[ev], y[ev]


def train_digits_cnn(epochs: int = EPOCHS, seed: int = TRAIN_SEED) -> DigitsCNN:
    """Train on the calibration split only (the evaluation split stays held out)."""
    torch.manual_seed(seed)
    return fit_digits(DigitsCNN(), epochs, seed)


def fit_digits(model: nn.Module, epochs: int = EPOCHS, seed: int = TRAIN_SEED) -> nn.Module:
    """Train any model of [N, 1, 8, 8] images -> 10 logits on the calibration split (benchmarks train other
    architectures on it the same way)."""
    x, y, _, _ = digits_data()
    g = torch.Generator().manual_seed(seed)
    opt = torch.optim.AdamW(model.parameters(), lr=2e-3, weight_decay=1e-4)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=4e-3, total_steps=epochs * ((len(x) + 63) // 64))
    xt, yt = torch.from_numpy(x), torch.from_numpy(y)
    model.train()
    for _ in progress(range(epochs), desc=f"train {type(model).__name__} on digits", total=epochs):
        perm = torch.randperm(len(xt), generator=g)
        for i in range(0, len(xt), 64):
            idx = perm[i:i + 64]
            xb = xt[idx]
            shift = torch.randint(-1, 2, (2,), generator=g)  # tiny translation augmentation
            xb = torch.roll(xb, shifts=(int(shift[0]), int(shift[1])), dims=(2, 3))
            loss = nn.functional.cross_entropy(model(xb), yt[idx])
            opt.zero_grad()
            loss.backward()
            opt.step()
            sched.step()
    return model.eval()


class DigitsTestbed(Testbed):
    name = "digits-cnn"
    description = "CNN (0.3M params) on scikit-learn digits, trained here; metric: held-out top-1 accuracy"
    primary_metric = "accuracy"
    output_kind = "logits"
    input_names = ("x",)
    dynamic_axes = {"x": {0: "batch"}}
    default_batch = 64

    def _weights_path(self):
        # The cache key covers the training code, so a change retrains instead of loading stale weights.
        src = (inspect.getsource(DigitsCNN) + inspect.getsource(train_digits_cnn) + inspect.getsource(fit_digits)
               + f"{EPOCHS}{TRAIN_SEED}")
        return cache_dir() / f"digits-cnn-{hashlib.sha256(src.encode()).hexdigest()[:12]}.safetensors"

    def load_model(self) -> nn.Module:
        from safetensors.torch import load_file, save_file

        from ..io import atomic_write

        path = self._weights_path()
        model = DigitsCNN()
        if path.exists():
            try:
                model.load_state_dict(load_file(str(path)))
                return model.eval()
            except Exception as e:  # a damaged cache is rebuilt, never trusted and never fatal
                warn(f"the cached digits-cnn weights {str(path)!r} are damaged ({str(e)[:80]}); retraining")
        model = train_digits_cnn()
        atomic_write(path, lambda tmp: save_file(model.state_dict(), tmp))
        return model

    def example_inputs(self, batch=None, seq=None):
        _, _, x, _ = digits_data()
        batch = batch or self.default_batch
        idx = np.arange(batch) % len(x)
        return {"x": x[idx]}

    def calibration(self, n=None, seq_len=None):
        x, _, _, _ = digits_data()
        return [{"x": x[i:i + 1]} for i in range(min(n or 300, len(x)))]

    def training_data(self, n=None):
        """The calibration split with its hard labels (training steps add a cross-entropy term)."""
        x, y, _, _ = digits_data()
        return [{"x": x[i:i + 1], "labels": y[i:i + 1]} for i in range(min(n or len(x), len(x)))]

    def evaluate(self, runner) -> dict[str, float]:
        from ..eval.metrics import accuracy

        _, _, x, y = digits_data()
        logits = np.concatenate([runner({"x": x[i:i + 256]}) for i in range(0, len(x), 256)])
        return {"accuracy": accuracy(logits, y)}
