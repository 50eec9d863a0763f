"""Model structure helpers: scopes (which layers a method touches), the channel dependency graph and the per-layer
pruning functions (graph/layers.py; graph/recurrent.py registers LSTM / GRU / RNN with them on import)."""
from . import recurrent  # noqa: F401
