"""flash-dmattn: attention with a dynamic keep-mask and a trainable additive bias.

Entry points: ``flash_dmattn_func`` (and its packed and varlen variants) run our CUDA kernels on
CUDA tensors and the pure-PyTorch reference on CPU tensors; ``flash_dmattn_func_auto()`` returns
the best available backend's callable (cuda > triton > flex > reference).

Importing never needs the compiled module: without it, ``get_available_backends()`` says why the
``cuda`` backend is missing and the other backends still work. ``CUDA_AVAILABLE`` is computed on
first access (it initializes CUDA), not at import.
"""
from ._version import __version__
from .api import (
    flash_dmattn_func,
    flash_dmattn_kvpacked_func,
    flash_dmattn_qkvpacked_func,
    flash_dmattn_varlen_func,
)
from .backends import (
    FLEX_AVAILABLE,
    TRITON_AVAILABLE,
    flash_dmattn_func_auto,
    flex_dmattn_func,
    get_available_backends,
    triton_dmattn_func,
)

__all__ = [
    "__version__",
    "flash_dmattn_func",
    "flash_dmattn_qkvpacked_func",
    "flash_dmattn_kvpacked_func",
    "flash_dmattn_varlen_func",
    "flash_dmattn_func_auto",
    "get_available_backends",
    "CUDA_AVAILABLE",
    "TRITON_AVAILABLE",
    "FLEX_AVAILABLE",
    "triton_dmattn_func",
    "flex_dmattn_func",
]


def __getattr__(name: str):
    if name == "CUDA_AVAILABLE":
        from . import backends

        return backends.CUDA_AVAILABLE
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
