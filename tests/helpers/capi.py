"""ctypes mirror of src/include/dmattn/dmattn.h, for testing libdmattn without the Python binding.

Only the tests use it: the package itself talks to libdmattn through the nanobind module.
"""
from __future__ import annotations

import ctypes
import os
from pathlib import Path

from flash_dmattn import _paths

SUCCESS, INVALID_ARGUMENT, NOT_IMPLEMENTED, NO_CUDA_DEVICE, UNSUPPORTED_DEVICE = 0, 1, 2, 3, 4
CUDA_ERROR, INSUFFICIENT_WORKSPACE, INTERNAL_ERROR = 5, 6, 7
DEVICE_CPU, DEVICE_CUDA = 1, 2
CODE_INT, CODE_UINT, CODE_FLOAT, CODE_BFLOAT, CODE_BOOL = 0, 1, 2, 4, 6
MAX_LIST = 32


class Device(ctypes.Structure):
    _fields_ = [("device_type", ctypes.c_int32), ("device_id", ctypes.c_int32)]


class DType(ctypes.Structure):
    _fields_ = [("code", ctypes.c_uint8), ("bits", ctypes.c_uint8), ("lanes", ctypes.c_uint16)]


class Tensor(ctypes.Structure):
    _fields_ = [
        ("data", ctypes.c_void_p),
        ("device", Device),
        ("ndim", ctypes.c_int32),
        ("dtype", DType),
        ("shape", ctypes.POINTER(ctypes.c_int64)),
        ("strides", ctypes.POINTER(ctypes.c_int64)),
        ("byte_offset", ctypes.c_uint64),
    ]


_T = ctypes.POINTER(Tensor)


class FwdArgs(ctypes.Structure):
    _fields_ = [
        ("struct_size", ctypes.c_uint32),
        ("q", _T), ("k", _T), ("v", _T), ("mask", _T), ("bias", _T), ("out", _T), ("lse", _T),
        ("cu_seqlens_q", _T), ("cu_seqlens_k", _T), ("block_table", _T),
        ("max_seqlen_q", ctypes.c_int64), ("max_seqlen_k", ctypes.c_int64),
        ("scale", ctypes.c_float), ("softcap", ctypes.c_float), ("causal", ctypes.c_int32),
        ("workspace", ctypes.c_void_p), ("workspace_size", ctypes.c_size_t), ("stream", ctypes.c_void_p),
        ("tile_plan", ctypes.c_void_p), ("tile_plan_size", ctypes.c_size_t),
    ]


class BwdArgs(ctypes.Structure):
    _fields_ = [
        ("struct_size", ctypes.c_uint32),
        ("dout", _T), ("q", _T), ("k", _T), ("v", _T), ("mask", _T), ("bias", _T), ("out", _T), ("lse", _T),
        ("dq", _T), ("dk", _T), ("dv", _T), ("dbias", _T), ("cu_seqlens_q", _T), ("cu_seqlens_k", _T),
        ("block_table", _T), ("max_seqlen_q", ctypes.c_int64), ("max_seqlen_k", ctypes.c_int64),
        ("scale", ctypes.c_float), ("softcap", ctypes.c_float), ("causal", ctypes.c_int32),
        ("deterministic", ctypes.c_int32),
        ("workspace", ctypes.c_void_p), ("workspace_size", ctypes.c_size_t), ("stream", ctypes.c_void_p),
        ("tile_plan", ctypes.c_void_p), ("tile_plan_size", ctypes.c_size_t),
    ]


class Capabilities(ctypes.Structure):
    _fields_ = [
        ("struct_size", ctypes.c_uint32),
        ("num_archs", ctypes.c_int32), ("archs", ctypes.c_int32 * MAX_LIST),
        ("num_families", ctypes.c_int32), ("families", (ctypes.c_char * 16) * 8),
        ("num_head_dims", ctypes.c_int32), ("head_dims", ctypes.c_int32 * MAX_LIST),
        ("dtypes", ctypes.c_uint32),
    ]


def library_path() -> Path:
    """The libdmattn under test: the installed package's, or $FLASH_DMATTN_LIBRARY (a build tree)."""
    return Path(os.environ.get("FLASH_DMATTN_LIBRARY", str(_paths.library_path())))


def load() -> ctypes.CDLL:
    lib = ctypes.CDLL(str(library_path()))
    lib.dmattn_abi_version.restype = ctypes.c_uint32
    lib.dmattn_version_string.restype = ctypes.c_char_p
    lib.dmattn_version.argtypes = [ctypes.POINTER(ctypes.c_int32)] * 3
    lib.dmattn_status_name.restype = ctypes.c_char_p
    lib.dmattn_status_name.argtypes = [ctypes.c_int]
    lib.dmattn_get_last_error.restype = ctypes.c_char_p
    lib.dmattn_get_capabilities.argtypes = [ctypes.POINTER(Capabilities)]
    lib.dmattn_kernel_table.restype = ctypes.c_char_p
    lib.dmattn_check_device.argtypes = [ctypes.c_int32]
    lib.dmattn_fwd.argtypes = [ctypes.POINTER(FwdArgs)]
    lib.dmattn_fwd_workspace_size.argtypes = [ctypes.POINTER(FwdArgs), ctypes.POINTER(ctypes.c_size_t)]
    lib.dmattn_bwd.argtypes = [ctypes.POINTER(BwdArgs)]
    lib.dmattn_bwd_workspace_size.argtypes = [ctypes.POINTER(BwdArgs), ctypes.POINTER(ctypes.c_size_t)]
    return lib


class Desc:
    """A tensor descriptor that owns its shape/stride arrays. Nothing is ever dereferenced on the
    host side, so descriptors of CUDA tensors can point at fake (but aligned) addresses."""

    _next_address = 0x7F0000000000

    def __init__(self, shape, dtype=(CODE_BFLOAT, 16), strides=None, device=DEVICE_CUDA, device_id=0,
                 data=None):
        self.shape = (ctypes.c_int64 * len(shape))(*shape)
        if strides is None:
            strides, acc = [], 1
            for s in reversed(shape):
                strides.insert(0, acc)
                acc *= max(s, 1)
        self.strides = (ctypes.c_int64 * len(shape))(*strides)
        if data is None:
            data = Desc._next_address
            Desc._next_address += 1 << 32
        self.t = Tensor(data, Device(device, device_id), len(shape), DType(dtype[0], dtype[1], 1),
                        self.shape, self.strides, 0)

    def ref(self):
        return ctypes.pointer(self.t)


BF16, FP16, FP32, BOOL, INT32 = (CODE_BFLOAT, 16), (CODE_FLOAT, 16), (CODE_FLOAT, 32), (CODE_BOOL, 8), (CODE_INT, 32)


def fwd_args(B=2, Q=5, K=7, H=4, H_kv=2, D=64, *, mask=None, bias=None, lse=True, dtype=BF16, **overrides):
    """A valid dense forward call; `overrides` replace descriptors (name=Desc or None) or scalars."""
    descs = {
        "q": Desc((B, Q, H, D), dtype), "k": Desc((B, K, H_kv, D), dtype), "v": Desc((B, K, H_kv, D), dtype),
        "out": Desc((B, Q, H, D), dtype),
        "lse": lse if isinstance(lse, Desc) else (Desc((B, H, Q), FP32) if lse else None),
        "mask": mask, "bias": bias,
    }
    scalars = {"scale": 0.125, "softcap": 0.0, "causal": 0}
    for name, value in overrides.items():
        (descs if name in descs or isinstance(value, Desc) else scalars)[name] = value
    args = FwdArgs()
    args.struct_size = ctypes.sizeof(FwdArgs)
    for name, d in descs.items():
        setattr(args, name, d.ref() if d is not None else None)
    for name, value in scalars.items():
        setattr(args, name, value)
    args._keep = descs  # keep descriptors alive with the struct
    return args


def bwd_args(B=2, Q=5, K=7, H=4, H_kv=2, D=64, *, bias=None, dbias=None, dtype=BF16, **overrides):
    descs = {
        "dout": Desc((B, Q, H, D), dtype), "q": Desc((B, Q, H, D), dtype), "k": Desc((B, K, H_kv, D), dtype),
        "v": Desc((B, K, H_kv, D), dtype), "out": Desc((B, Q, H, D), dtype), "lse": Desc((B, H, Q), FP32),
        "dq": Desc((B, Q, H, D), dtype), "dk": Desc((B, K, H_kv, D), dtype), "dv": Desc((B, K, H_kv, D), dtype),
        "mask": None, "bias": bias, "dbias": dbias,
    }
    scalars = {"scale": 0.125, "softcap": 0.0, "causal": 0, "deterministic": 0}
    for name, value in overrides.items():
        (descs if name in descs or isinstance(value, Desc) else scalars)[name] = value
    args = BwdArgs()
    args.struct_size = ctypes.sizeof(BwdArgs)
    for name, d in descs.items():
        setattr(args, name, d.ref() if d is not None else None)
    for name, value in scalars.items():
        setattr(args, name, value)
    args._keep = descs
    return args
