# The backend registry: which attention implementations can run here, and why the others cannot.
# flash_dmattn_func_auto() -> one callable with flash_dmattn_func's signature -> cuda | triton | flex | reference.
# The top layer: it imports api and library, nothing below imports it.
# Invariant: a backend is listed as available only if it runs; nothing pretends (triton is absent).
"""Backends, in priority order:

- ``cuda``: our fused kernels (``flash_dmattn_func``); needs the compiled library and a supported GPU.
- ``triton``: planned, not implemented yet; never available.
- ``flex``: PyTorch FlexAttention (``flex_dmattn_func``), compiled; listed only where a CUDA device
  is visible, since on CPU torch runs it eagerly and without a q/k/v backward (``FLEX_AVAILABLE``
  only says that it imports: ``flex_dmattn_func`` still runs CPU inference).
- ``reference``: the pure-PyTorch reference (``reference_dmattn_func``), on any device, always
  available; exact but it materializes scores chunk by chunk. This one is our addition to the
  seed's three: it keeps ``flash_dmattn_func_auto()`` working on a machine with none of them.

Every callable returned by ``flash_dmattn_func_auto`` takes ``flash_dmattn_func``'s arguments in
its order, ``(q, k, v, attn_mask=None, attn_bias=None, scale=None, is_causal=None, softcap=None,
deterministic=None, return_lse=False)``, with the same shapes and meanings.
"""
from __future__ import annotations

from typing import Callable, Optional

from .. import api, library
from . import flex as _flex
from .flex import flex_dmattn_func

__all__ = [
    "BACKENDS",
    "backend_status",
    "get_available_backends",
    "flash_dmattn_func_auto",
    "cuda_dmattn_func",
    "triton_dmattn_func",
    "flex_dmattn_func",
    "reference_dmattn_func",
    "CUDA_AVAILABLE",
    "TRITON_AVAILABLE",
    "FLEX_AVAILABLE",
]

BACKENDS = ("cuda", "triton", "flex", "reference")  # priority order

_TRITON_REASON = "the Triton backend is not implemented yet"

TRITON_AVAILABLE = False
FLEX_AVAILABLE = _flex.import_error() is None  # flex_dmattn_func can be called


def __getattr__(name: str):
    # CUDA_AVAILABLE asks the library about the current device, which initializes CUDA: do it on
    # first use, not at import (importing flash_dmattn stays cheap and fork-safe).
    if name == "CUDA_AVAILABLE":
        return library.unavailable_reason() is None
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def backend_status() -> dict[str, Optional[str]]:
    """{backend name: None if it can run here, else the reason it cannot}, in priority order."""
    return {
        "cuda": library.unavailable_reason(),
        "triton": _TRITON_REASON,
        "flex": _flex.unavailable_reason(),
        "reference": None,
    }


def get_available_backends() -> list[str]:
    """Names of the backends that can run here, best first (cuda > triton > flex > reference)."""
    return [name for name, reason in backend_status().items() if reason is None]


cuda_dmattn_func = api.flash_dmattn_func  # our CUDA kernels: the public function itself


def triton_dmattn_func(q, k, v, attn_mask=None, attn_bias=None, scale=None, is_causal=None,
                       softcap=None, deterministic=None, return_lse=False):
    """Planned Triton backend. Always raises NotImplementedError: there is no Triton kernel yet."""
    raise NotImplementedError(f"triton_dmattn_func: {_TRITON_REASON}; use "
                              "flash_dmattn_func_auto() to get the best available backend")


def reference_dmattn_func(q, k, v, attn_mask=None, attn_bias=None, scale=None, is_causal=None,
                          softcap=None, deterministic=None, return_lse=False):
    """The pure-PyTorch reference (reference.py) on any device, differentiable, any float dtype and
    head dim. ``deterministic`` has no effect: the reference is deterministic."""
    return api.attention(q, k, v, attn_mask, attn_bias, scale, is_causal, softcap, deterministic, return_lse,
                         backend="reference")


_FUNCS: dict[str, Callable] = {
    "cuda": cuda_dmattn_func,
    "triton": triton_dmattn_func,
    "flex": flex_dmattn_func,
    "reference": reference_dmattn_func,
}


def _describe(status: dict[str, Optional[str]]) -> str:
    available = [n for n, r in status.items() if r is None]
    lines = [f"available: {', '.join(available) or 'none'}"]
    lines += [f"{n}: {r}" for n, r in status.items() if r is not None]
    return "; ".join(lines)


def flash_dmattn_func_auto(backend: Optional[str] = None) -> Callable:
    """The attention callable of ``backend``, or of the best available one when None.

    Priority: cuda > triton > flex > reference. The callable has the unified signature
    ``attn(q, k, v, attn_mask=None, attn_bias=None, scale=None, is_causal=None, softcap=None,
    deterministic=None, return_lse=False)`` of ``flash_dmattn_func``; it is not the output.

    Example::

        attn = flash_dmattn_func_auto()                 # or backend="cuda" / "flex" / "reference"
        out = attn(q, k, v, attn_mask=keep, attn_bias=bias, is_causal=True)

    Raises ValueError naming the backend, with every backend's status, when it is unknown or
    cannot run here.
    """
    status = backend_status()
    if backend is None:
        return next(_FUNCS[n] for n, reason in status.items() if reason is None)
    if not isinstance(backend, str) or backend not in status:
        raise ValueError(f"backend: unknown backend {backend!r}; choose one of "
                         f"{', '.join(BACKENDS)} ({_describe(status)})")
    if status[backend] is not None:
        raise ValueError(f"backend: {backend!r} is not available: {status[backend]} "
                         f"({_describe(status)})")
    return _FUNCS[backend]
