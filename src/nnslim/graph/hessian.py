"""Second-order layer-wise primitives shared by GPTQ (quantization) and SparseGPT (pruning).

Both minimise || X W^T - X W'^T || one column of W at a time (Optimal Brain Surgeon): a column is
replaced (rounded, or zeroed), and its error is spread over the columns not yet processed through the
upper Cholesky factor of the inverse Hessian H = 2/n X^T X, with lazy updates in blocks of columns.
"""
from __future__ import annotations

import contextlib
import copy
from typing import Callable

import numpy as np
import torch

from ..errors import NnslimError


class HessianAccumulator:
    """Running 2/n sum x x^T of a Linear's inputs (fp32, on the inputs' device)."""

    def __init__(self, in_features: int, device):
        self.h = torch.zeros(in_features, in_features, dtype=torch.float32, device=device)
        self.n = 0

    @classmethod
    def add_to(cls, store: dict, name: str, x: torch.Tensor) -> None:
        """store[name].add(x), the accumulator made on first use (not dict.setdefault: Python would build its
        default, a zeroed [K, K], on every call)."""
        if name not in store:
            store[name] = cls(x.shape[-1], x.device)
        store[name].add(x)

    def add(self, x: torch.Tensor) -> None:
        x = x.reshape(-1, x.shape[-1]).float()
        m = x.shape[0]
        self.h.mul_(self.n / (self.n + m))
        self.n += m
        self.h.addmm_(x.t(), x, alpha=2.0 / self.n)  # no [K, K] temporary


def dead_columns(h: torch.Tensor, w: torch.Tensor | None = None) -> torch.Tensor:
    """Inputs that were always zero: give them unit curvature and zero weight (in place; w [N, K] may be
    left out and zeroed by the caller). Returns the mask of dead inputs [K]."""
    dead = torch.diag(h) == 0
    h[dead, dead] = 1.0
    if w is not None:
        w[:, dead] = 0.0
    return dead


def permute_rows_(t: torch.Tensor, perm: torch.Tensor) -> torch.Tensor:
    """t[perm] in place: rows moved along the permutation's cycles with one row of scratch space
    (a [K, N] index_select would hold a second copy of t). Off the CPU, where a launch per row costs more
    than the copy saves, it is one index_select."""
    if t.device.type != "cpu":
        return t.copy_(t.index_select(0, perm))
    p = perm.tolist()
    done = bytearray(len(p))
    scratch = torch.empty_like(t[0])
    for start in range(len(p)):
        if done[start]:
            continue
        done[start] = 1
        if p[start] == start:
            continue
        scratch.copy_(t[start])
        i = start
        while p[i] != start:  # row i takes row p[i], which is not overwritten yet
            t[i].copy_(t[p[i]])
            i = p[i]
            done[i] = 1
        t[i].copy_(scratch)
    return t


def permute_symmetric(h: torch.Tensor, perm: torch.Tensor, chunk: int = 256) -> torch.Tensor:
    """h[perm][:, perm] in place (no second [K, K] matrix): the columns of each chunk of rows, then the rows."""
    for r in range(0, h.shape[0], chunk):
        h[r:r + chunk] = h[r:r + chunk].index_select(1, perm)
    return permute_rows_(h, perm)


def inverse_factor(h: torch.Tensor, damp: float, layer: str = "") -> torch.Tensor:
    """Upper Cholesky factor of (H + damp * mean(diag H) * I)^-1; consumes h. On a CPU it is computed in h's
    own memory (LAPACK potrf + trtri in place: no second [K, K] matrix, a 7B down_proj's is 0.48 GB, and
    half the flops) and h is returned; elsewhere h is scratch, freed before the inverse is formed when the caller passes its
    only reference (`inverse_factor(box.pop(), ..)`), so at most two [K, K] matrices exist at a time."""
    h.diagonal().add_(damp * torch.mean(torch.diag(h)))
    failed = NnslimError(f"the Hessian of layer {layer or '?'} is not positive definite even with damp={damp}; "
                         "raise damp (e.g. 0.1) or give more calibration samples")
    if h.device.type == "cpu" and h.dtype in (torch.float32, torch.float64) and h.is_contiguous():
        if not _inverse_factor_in_place(h) or not bool(torch.isfinite(h.diagonal()).all()):
            raise failed  # (OpenBLAS' potrf lets a NaN through: the diagonal shows it)
        return h
    try:
        chol = torch.linalg.cholesky(h)
        del h
        inv = torch.cholesky_inverse(chol)
        del chol
        return torch.linalg.cholesky(inv, upper=True)
    except torch.linalg.LinAlgError:
        raise failed from None


def _inverse_factor_in_place(h: torch.Tensor) -> bool:
    """h (symmetric, row-major) becomes the upper factor U of h^-1 (U^T U = h^-1) in place; False if h is
    not positive definite. With J the order reversal: J H J = R^T R (Cholesky, R upper), so H = S^T S for
    the lower S = J R J and H^-1 = S^-1 S^-T: S^-1 = J R^-1 J is the lower factor of H^-1, which read
    row-major is U. One Cholesky and one triangular inverse (2/3 K^3 flops; cholesky -> cholesky_inverse ->
    cholesky is 4/3 K^3), all in h's memory (J X J of a K x K array is its flat reversal). BLAS threads
    as many as torch's."""
    from scipy.linalg import lapack
    from threadpoolctl import threadpool_limits

    flat = h.view(-1).numpy()
    a = h.numpy().T  # F-contiguous view of the same memory (h is symmetric)
    potrf, trtri = (lapack.spotrf, lapack.strtri) if h.dtype == torch.float32 else (lapack.dpotrf, lapack.dtrtri)
    _reverse(flat)
    big = h.shape[0] >= 1024  # (setting the BLAS threads costs ~1.5 ms: only where the work is worth it)
    with threadpool_limits(torch.get_num_threads(), user_api="blas") if big else contextlib.nullcontext():
        for step in (lambda: potrf(a, lower=0, overwrite_a=1, clean=1), lambda: trtri(a, lower=0, overwrite_c=1)):
            out, info = step()
            if info != 0:
                return False
            if not np.shares_memory(out, a):  # (not expected for an F-contiguous input, but then: into h)
                np.copyto(a, out)
    _reverse(flat)
    return True


def _reverse(flat: np.ndarray, chunk: int = 1 << 20) -> None:
    """flat[::-1] in place, a chunk at a time (numpy would copy the whole array for the overlap)."""
    n = flat.shape[0]
    for lo in range(0, n // 2, chunk):
        hi = min(lo + chunk, n // 2)
        head = flat[lo:hi].copy()
        flat[lo:hi] = flat[n - hi:n - lo][::-1]
        flat[n - hi:n - lo] = head[::-1]


def obs_sweep(wt: torch.Tensor, hinv: torch.Tensor, block_size: int,
              column: Callable[[int, torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]) -> torch.Tensor:
    """Process the columns of a weight W [N, K] left to right, given TRANSPOSED as wt [K, N] (float,
    changed in place): row j of wt is column j of W, contiguous, so each step reads and updates whole
    rows (column by column on a row-major W would touch one element per cache line on a CPU).

    column(j, col, w_block, hinv_block) returns the replacement of column j (global index; col is [N]);
    w_block is the current block [B, N] (rows from the block start, already error-updated) and
    hinv_block its [B, B] inverse-Hessian factor, so a method may decide per block (e.g. SparseGPT's
    masks). Returns wt with every column replaced.
    """
    k = wt.shape[0]
    for i1 in range(0, k, block_size):
        i2 = min(i1 + block_size, k)
        w1 = wt[i1:i2]  # a view: updated in place
        err1 = torch.empty_like(w1)
        hinv1 = hinv[i1:i2, i1:i2]
        for i in range(i2 - i1):
            col = w1[i]
            new = column(i1 + i, col, w1, hinv1)
            err = (col - new) / hinv1[i, i]
            w1[i:] -= hinv1[i, i:, None] * err[None, :]
            w1[i] = new
            err1[i] = err
        if i2 < k:
            wt[i2:].addmm_(hinv[i1:i2, i2:].t(), err1, alpha=-1)  # (no [K - i2, N] temporary)
    return wt


def refit_weight(w: torch.Tensor, h_kk: torch.Tensor, c_k: torch.Tensor, damp: float = 0.01) -> torch.Tensor:
    """Least-squares weight for reduced inputs X_k that best reproduces X W^T:
    W_k'^T = (X_k^T X_k + ridge)^-1 X_k^T X W^T, from h_kk = X_k^T X_k and c_k = X_k^T X (any common scale).
    With X_k a column subset of X this is W_k^T + H_kk^-1 H_kr W_r^T. Returns [out, k]."""
    h = h_kk.float().clone()
    h.diagonal().add_(damp * h.diagonal().mean().clamp(min=1e-12))
    return torch.linalg.solve(h, c_k.float() @ w.detach().float().t()).t().to(w.dtype)


class HessianObserver:
    """The observe() of a layer-wise algorithm that needs each target's input Hessian (GPTQ, SparseGPT).

    Targets fed the very same input tensor (q/k/v projections, gate/up) share one accumulator: it is
    built once, not once per target (the same values, a third of the memory and work for q/k/v)."""

    def __init__(self):
        self.hessians: dict[str, HessianAccumulator] = {}
        self.shared: dict[str, str] = {}  # target -> the target whose accumulator it uses
        self._last: tuple[str, torch.Tensor] | None = None  # (held so that its storage is not reused)

    def observe(self, name: str, module, x: torch.Tensor) -> None:
        last = self._last
        same = last is not None and last[1] is x  # (feed_block hands every target the caller's own tensor)
        if name not in self.shared:  # first input of this target: share with the previous one's?
            self.shared[name] = self.shared[last[0]] if same else name
        owner = self.shared[name]
        self._last = (name, x)
        if owner != name:
            if not same or self.shared[last[0]] != owner:
                raise NnslimError(f"{name} was first fed the input of {owner} and later a different one; "
                                  "its Hessian cannot be shared")
            return
        HessianAccumulator.add_to(self.hessians, name, x)

    def merge(self, others: list["HessianObserver"]) -> None:
        """Add the statistics the other devices' copies of the block collected (spread calibration)."""
        for other in others:
            for name, acc in other.hessians.items():
                mine = self.hessians[name]
                total = mine.n + acc.n
                mine.h.mul_(mine.n / total).add_(acc.h.to(mine.h.device), alpha=acc.n / total)
                mine.n = total
            if other.shared != self.shared:
                raise NnslimError("the copies of one block shared their targets' inputs differently on two devices")
            other.hessians.clear()

    def subset(self, names: list[str], device) -> "HessianObserver":
        """A copy holding the statistics of `names` only, on `device` (names fed one input travel together);
        the accumulators are handed over, not copied."""
        part = copy.copy(self)
        part.shared = {n: self.shared[n] for n in names}
        part.hessians = {}
        for owner in set(part.shared.values()):
            acc = self.hessians.pop(owner)
            acc.h = acc.h.to(device)
            part.hessians[owner] = acc
        part._last = None
        return part

    def take(self, name: str) -> torch.Tensor:
        """The Hessian of `name`, handed over: the last of the targets sharing it gets the accumulator
        (dropped to free its memory), the others a copy (callers may use it as scratch)."""
        self._last = None
        owner = self.shared.pop(name)
        if any(o == owner for o in self.shared.values()):
            return self.hessians[owner].h.clone()
        return self.hessians.pop(owner).h
