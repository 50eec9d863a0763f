"""Run nnslim's Triton kernels on the CPU with Triton's interpreter (TRITON_INTERPRET=1), for tests.

Triton 3.6's interpreter converts size-1 arrays with int(), which NumPy >= 2.4 refuses for arrays
of rank > 0; `enable()` patches that one conversion. It changes nothing when compiling for a GPU.
"""
from __future__ import annotations

import os


def enable() -> bool:
    """True when Triton kernels can run here in the interpreter (sets TRITON_INTERPRET=1 first).

    Call it before triton is first imported: Triton's own library functions are compiled or
    interpreted depending on TRITON_INTERPRET at import time.
    """
    os.environ["TRITON_INTERPRET"] = "1"
    try:
        from triton.runtime import interpreter
    except ImportError:
        return False
    original = interpreter._patch_lang_tensor
    if getattr(original, "_nnslim", False):
        return True

    def patched(tensor, scope):
        original(tensor, scope)
        scope.set_attr(tensor, "__index__", lambda self: int(self.handle.data.reshape(-1)[0]))

    patched._nnslim = True
    interpreter._patch_lang_tensor = patched
    return True
