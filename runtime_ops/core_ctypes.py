"""ctypes binding of the kernel core's C ABI (``csrc/core/sefp_capi.cc``).

For parity tests and benchmarks: call the fused kernel on torch tensors with a
chosen ISA and thread count, without going through onnxruntime or ExecuTorch.

    from otaro_export.runtime_ops.core_ctypes import CoreKernels
    k = CoreKernels.load()
    y = k.linear(x, packed, bits=4, isa="avx512")
"""

from __future__ import annotations

import ctypes
import threading

import torch

from otaro_export.errors import InvalidBitsError, KernelLibraryError
from otaro_export.packing import PackedSEFP

from .build import library_path

#: otaro::Isa values (sefp_kernel.h)
ISAS = {"auto": 0, "scalar": 1, "avx2": 2, "avx512": 3, "neon": 4}
_STATUS_INVALID_BITS = 1

_P = ctypes.c_void_p
_I64 = ctypes.c_int64
_INT = ctypes.c_int


def _ptr(t: torch.Tensor | None) -> int | None:
    return None if t is None else t.data_ptr()


class CoreKernels:
    """The loaded "core" library."""

    _instance: CoreKernels | None = None
    _lock = threading.Lock()

    def __init__(self, path):
        try:
            lib = ctypes.CDLL(str(path))
        except OSError as exc:
            raise KernelLibraryError(f"cannot load the SEFP kernel core {path}: {exc}") from exc
        lib.otaro_sefp_linear.restype = _INT
        lib.otaro_sefp_linear.argtypes = [_P, _I64, _P, _P, _P, _P, _P, _I64, _I64, _I64, _P, _INT, _P, _INT, _INT]
        lib.otaro_sefp_linear_range.restype = _INT
        lib.otaro_sefp_linear_range.argtypes = [
            _P, _I64, _P, _P, _P, _P, _P, _I64, _I64, _I64, _P, _INT, _P, _I64, _I64, _I64, _INT,
        ]  # fmt: skip
        lib.otaro_status_message.restype = ctypes.c_char_p
        lib.otaro_status_message.argtypes = [_INT]
        lib.otaro_isa_available.restype = _INT
        lib.otaro_isa_available.argtypes = [_INT]
        lib.otaro_best_isa.restype = _INT
        lib.otaro_default_num_threads.restype = _INT
        self._lib = lib
        self.path = path

    @classmethod
    def load(cls) -> CoreKernels:
        """Build (first use) and load the core library once per process."""
        with cls._lock:
            if cls._instance is None:
                cls._instance = cls(library_path("core"))
            return cls._instance

    def isa_available(self, isa: str) -> bool:
        return bool(self._lib.otaro_isa_available(ISAS[isa]))

    def available_isas(self) -> list[str]:
        return [name for name in ISAS if name != "auto" and self.isa_available(name)]

    def best_isa(self) -> str:
        code = self._lib.otaro_best_isa()
        return next(name for name, value in ISAS.items() if value == code)

    def default_num_threads(self) -> int:
        return int(self._lib.otaro_default_num_threads())

    def _raise_for(self, status: int, bits: int, isa: str) -> None:
        if status != 0:
            message = self._lib.otaro_status_message(status).decode()
            if status == _STATUS_INVALID_BITS:
                raise InvalidBitsError(f"otaro sefp_linear kernel: {message} (got {bits})")
            raise ValueError(f"otaro sefp_linear kernel ({isa}): {message}")

    def linear_range(
        self,
        x: torch.Tensor,
        packed: PackedSEFP,
        bits: int,
        out: torch.Tensor,
        n_begin: int,
        n_end: int,
        bias: torch.Tensor | None = None,
        *,
        isa: str = "auto",
    ) -> torch.Tensor:
        """Columns ``n_begin:n_end`` of ``x @ W_bits^T + bias`` into ``out [rows, ldy]`` (single thread)."""
        x2 = x.reshape(-1, x.shape[-1]).contiguous()
        if out.dtype != torch.float32 or out.dim() != 2 or not out.is_contiguous() or out.shape[0] != x2.shape[0]:
            raise ValueError(f"out must be a contiguous float32 [{x2.shape[0]}, ldy] tensor")
        if x2.dtype != torch.float32:
            raise TypeError(f"x must be float32, got {x2.dtype}")
        n = packed.out_features
        if bias is not None and (bias.dtype != torch.float32 or tuple(bias.shape) != (n,) or not bias.is_contiguous()):
            raise ValueError(f"bias must be a contiguous float32 [{n}] tensor")
        planes = [p.contiguous() for p in (*packed.planes(), packed.exponents)]
        status = self._lib.otaro_sefp_linear_range(
            _ptr(x2), x2.shape[0], *(_ptr(p) for p in planes), packed.out_features, x.shape[-1],
            packed.num_groups, _ptr(bias), int(bits), _ptr(out), out.shape[1], n_begin, n_end, ISAS[isa],
        )  # fmt: skip
        self._raise_for(status, bits, isa)
        return out

    def linear(
        self,
        x: torch.Tensor,
        packed: PackedSEFP,
        bits: int,
        bias: torch.Tensor | None = None,
        *,
        isa: str = "auto",
        num_threads: int = 0,
        out: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """``x @ W_bits^T + bias`` for float32 ``x [..., K]`` via the fused kernel."""
        if isa not in ISAS:
            raise ValueError(f"unknown isa {isa!r}; expected one of {list(ISAS)}")
        if x.dtype != torch.float32:
            raise TypeError(f"x must be float32, got {x.dtype}")
        x2 = x.reshape(-1, x.shape[-1]).contiguous()
        n = packed.out_features
        if out is None:
            out = torch.empty(x2.shape[0], n, dtype=torch.float32)
        elif out.dtype != torch.float32 or not out.is_contiguous() or out.numel() != x2.shape[0] * n:
            raise ValueError(f"out must be a contiguous float32 tensor of {x2.shape[0] * n} elements")
        if bias is not None and (bias.dtype != torch.float32 or tuple(bias.shape) != (n,)):
            raise ValueError(f"bias must be float32 [{n}], got {bias.dtype} {list(bias.shape)}")
        bias_c = None if bias is None else bias.contiguous()
        planes = [p.contiguous() for p in (*packed.planes(), packed.exponents)]
        status = self._lib.otaro_sefp_linear(
            _ptr(x2), x2.shape[0], *(_ptr(p) for p in planes),
            n, x.shape[-1], packed.num_groups, _ptr(bias_c), int(bits), _ptr(out), int(num_threads), ISAS[isa],
        )  # fmt: skip
        self._raise_for(status, bits, isa)
        return out.reshape(*x.shape[:-1], n)
