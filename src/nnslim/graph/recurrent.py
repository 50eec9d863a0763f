"""Structural pruning of recurrent layers (nn.LSTM, nn.GRU, nn.RNN): their input features, and their hidden units.

A hidden unit j is one atom for the whole module (torch keeps one hidden_size for every layer and direction): it
owns row j of each gate block of every weight_ih / weight_hh / bias (gates: LSTM 4, GRU 3, RNN 1), column j of every
weight_hh, column d * H + j of the weight_ih of every layer above the first (d: direction), and positions j (and
H + j when bidirectional) of the output's last axis and of the final hidden (and cell) state. Kept whole, with the
reason: an LSTM with proj_size, a packed-sequence input, an initial state given by the caller (its size is the
caller's), a layer called on channels off its feature axis.
"""
from __future__ import annotations

import numpy as np
import torch
from torch import nn

from .layers import Layer, register_layer, replace_param

_GATES = {nn.LSTM: 4, nn.GRU: 3, nn.RNN: 1}


def _gates(m: nn.RNNBase) -> int:
    return next(g for t, g in _GATES.items() if isinstance(m, t))


def _suffixes(m: nn.RNNBase) -> list[str]:
    return [""] + (["_reverse"] if m.bidirectional else [])


@register_layer(nn.LSTM, nn.GRU, nn.RNN)
class RecurrentLayer(Layer):
    def propagate(self, g, name, m, call):
        x = call.args[0] if call.args else call.kwargs.get("input")  # (a PackedSequence is not a tensor)
        feature_axis = x.dim() - 1 if isinstance(x, torch.Tensor) else None
        outs = call.outputs
        state_given = any(isinstance(a, (torch.Tensor, tuple)) for a in list(call.args[1:]) +
                          [v for k, v in call.kwargs.items() if k in ("hx", "h_0")])
        why = ("LSTM with proj_size" if getattr(m, "proj_size", 0) else
               "packed-sequence input" if not isinstance(x, torch.Tensor) else
               "initial state given by the caller" if state_given else None)
        if isinstance(x, torch.Tensor):  # the input features, whatever happens to the hidden units
            g.consume(name, "in", x, feature_axis)
        gids = g.new(m.hidden_size, frozen=None if why is None else f"{name}: {why}")
        if why is None:
            g.member(name, "hid", gids)
        y = outs[0]
        g.set(y, y.dim() - 1, np.tile(gids, 2 if m.bidirectional else 1))
        for state in outs[1:]:  # h_n (and c_n): [layers * directions, (batch,) hidden]
            g.set(state, state.dim() - 1, gids)

    def weights(self, m, role):
        if role == "in":
            return [(getattr(m, f"weight_ih_l0{s}"), 1, 1) for s in _suffixes(m)]
        # a hidden unit's recurrent column in every layer and direction
        return [(getattr(m, f"weight_hh_l{layer}{s}"), 1, 1) for layer in range(m.num_layers) for s in _suffixes(m)]

    def slice(self, m, role, keep):
        keep = torch.as_tensor(keep)
        if role == "in":
            for s in _suffixes(m):
                w = getattr(m, f"weight_ih_l0{s}")
                replace_param(m, f"weight_ih_l0{s}", w.detach()[:, keep].clone())
            m.input_size = len(keep)
            return m
        h, gates, dirs = m.hidden_size, _gates(m), 2 if m.bidirectional else 1
        rows = torch.cat([gi * h + keep for gi in range(gates)])
        below = torch.cat([d * h + keep for d in range(dirs)])  # the layer below's outputs, both directions
        for layer in range(m.num_layers):
            for s in _suffixes(m):
                w_ih = getattr(m, f"weight_ih_l{layer}{s}").detach()[rows]
                replace_param(m, f"weight_ih_l{layer}{s}", (w_ih[:, below] if layer else w_ih).clone())
                replace_param(m, f"weight_hh_l{layer}{s}", getattr(m, f"weight_hh_l{layer}{s}").detach()[rows][:, keep]
                              .clone())
                for b in ("bias_ih", "bias_hh"):
                    if getattr(m, f"{b}_l{layer}{s}", None) is not None:
                        replace_param(m, f"{b}_l{layer}{s}", getattr(m, f"{b}_l{layer}{s}").detach()[rows].clone())
        m.hidden_size = len(keep)
        return m
