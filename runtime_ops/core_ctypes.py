"""ctypes binding of the kernel core's C ABI (``csrc/core/sefp_capi.cc``).

For parity tests and benchmarks: call the fused kernel on torch tensors with a
chosen ISA and thread count, without going through onnxruntime or ExecuTorch.

    from otaro_export.runtime_ops.core_ctypes import CoreKernels
    k = CoreKernels.load()
    y = k.linear(x, packed, bits=4, isa="avx512")              # floor (the paper's rule)
    y = k.linear(x, packed, bits=4, levels=sefp.center_levels())  # any reconstruction table
    rows = k.embedding(ids, packed, bits=4)                     # rows of W_4, [*ids.shape, K]
"""

from __future__ import annotations

import ctypes
import threading

import torch

from otaro_export.errors import InvalidBitsError, KernelLibraryError
from otaro_export.packing import PackedSEFP
from otaro_export.sefp import LEVELS_SHAPE

from .build import library_path

#: otaro::Isa values (sefp_kernel.h)
ISAS = {"auto": 0, "scalar": 1, "avx2": 2, "avx512": 3, "neon": 4}
_STATUS_INVALID_BITS = 1
_STATUS_INVALID_INDEX = 6

_P = ctypes.c_void_p
_I64 = ctypes.c_int64
_INT = ctypes.c_int


def _ptr(t: torch.Tensor | None) -> int | None:
    return None if t is None else t.data_ptr()


class WeightView(ctypes.Structure):
    """otaro::SEFPWeightView (sefp_kernel.h), for the benchmark helper."""

    _fields_ = [
        ("p0", _P), ("p1", _P), ("p2", _P), ("p3", _P), ("exponents", _P),
        ("out_features", _I64), ("in_features", _I64), ("num_groups", _I64), ("levels", _P),
    ]  # fmt: skip


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
        lib.otaro_sefp_linear.argtypes = [
            _P, _I64, _P, _P, _P, _P, _P, _I64, _I64, _I64, _P, _P, _INT, _P, _INT, _INT, _INT,
        ]  # fmt: skip
        lib.otaro_sefp_linear_range.restype = _INT
        lib.otaro_sefp_linear_range.argtypes = [
            _P, _I64, _P, _P, _P, _P, _P, _I64, _I64, _I64, _P, _P, _INT, _P, _I64, _I64, _I64, _INT, _INT,
        ]  # fmt: skip
        lib.otaro_sefp_embedding.restype = _INT
        lib.otaro_sefp_embedding.argtypes = [
            _P, _I64, _P, _P, _P, _P, _P, _I64, _I64, _I64, _P, _INT, _P, _INT, _INT, ctypes.POINTER(_I64),
        ]  # fmt: skip
        lib.otaro_time_linear_stream.restype = _INT
        lib.otaro_time_linear_stream.argtypes = [
            _P, _I64, ctypes.POINTER(WeightView), _I64, _INT, _P, _INT, _INT, _I64, _P, _INT,
        ]  # fmt: skip
        lib.otaro_int8_kernel_name.restype = ctypes.c_char_p
        lib.otaro_int8_kernel_name.argtypes = [_INT]
        lib.otaro_int8_kernel_max_bits.restype = _INT
        lib.otaro_int8_kernel_max_bits.argtypes = [_INT]
        lib.otaro_time_read.restype = ctypes.c_uint64
        lib.otaro_time_read.argtypes = [_P, _I64, _I64, _P]
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

    def int8_kernel_name(self, isa: str = "auto") -> str:
        """The integer kernel of int8-activation decode calls with ``isa`` here: avx512-vnni, avx2, neon-sdot, none."""
        return self._lib.otaro_int8_kernel_name(ISAS[isa]).decode()

    def int8_kernel_max_bits(self, isa: str = "auto") -> int:
        """The highest precision E5Mk that kernel computes (6 with AVX-512 VBMI, else 4; 0: none)."""
        return int(self._lib.otaro_int8_kernel_max_bits(ISAS[isa]))

    def _raise_for(self, status: int, bits: int, isa: str, op: str = "sefp_linear") -> None:
        if status != 0:
            message = self._lib.otaro_status_message(status).decode()
            if status == _STATUS_INVALID_BITS:
                raise InvalidBitsError(f"otaro {op} kernel: {message} (got {bits})")
            raise ValueError(f"otaro {op} kernel ({isa}): {message}")

    @staticmethod
    def _levels(levels: torch.Tensor | None) -> torch.Tensor | None:
        if levels is None:
            return None
        if levels.dtype != torch.float32 or tuple(levels.shape) != LEVELS_SHAPE:
            raise ValueError(f"levels must be float32 {list(LEVELS_SHAPE)}, got {levels.dtype} {list(levels.shape)}")
        return levels.contiguous()

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
        levels: torch.Tensor | None = None,
        isa: str = "auto",
        act_int8_max_bits: int = 0,
    ) -> torch.Tensor:
        """Columns ``n_begin:n_end`` of ``x @ W_bits^T + bias`` into ``out [rows, ldy]`` (single thread).

        ``act_int8_max_bits``: int8 activations at ``bits <= act_int8_max_bits`` (0: never; docs/FORMAT.md §9).
        """
        x2 = x.reshape(-1, x.shape[-1]).contiguous()
        if out.dtype != torch.float32 or out.dim() != 2 or not out.is_contiguous() or out.shape[0] != x2.shape[0]:
            raise ValueError(f"out must be a contiguous float32 [{x2.shape[0]}, ldy] tensor")
        if x2.dtype != torch.float32:
            raise TypeError(f"x must be float32, got {x2.dtype}")
        n = packed.out_features
        if bias is not None and (bias.dtype != torch.float32 or tuple(bias.shape) != (n,) or not bias.is_contiguous()):
            raise ValueError(f"bias must be a contiguous float32 [{n}] tensor")
        planes = [p.contiguous() for p in (*packed.planes(), packed.exponents)]
        table = self._levels(levels)
        status = self._lib.otaro_sefp_linear_range(
            _ptr(x2), x2.shape[0], *(_ptr(p) for p in planes), packed.out_features, x.shape[-1],
            packed.num_groups, _ptr(bias), _ptr(table), int(bits), _ptr(out), out.shape[1], n_begin, n_end,
            ISAS[isa], int(act_int8_max_bits),
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
        levels: torch.Tensor | None = None,
        isa: str = "auto",
        num_threads: int = 0,
        out: torch.Tensor | None = None,
        act_int8_max_bits: int = 0,
    ) -> torch.Tensor:
        """``x @ W_bits^T + bias`` for float32 ``x [..., K]`` via the fused kernel (``levels``: docs/FORMAT.md §3).

        ``act_int8_max_bits``: int8 activations at ``bits <= act_int8_max_bits`` (0: never; docs/FORMAT.md §9).
        """
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
        table = self._levels(levels)
        status = self._lib.otaro_sefp_linear(
            _ptr(x2), x2.shape[0], *(_ptr(p) for p in planes), n, x.shape[-1], packed.num_groups, _ptr(bias_c),
            _ptr(table), int(bits), _ptr(out), int(num_threads), ISAS[isa], int(act_int8_max_bits),
        )  # fmt: skip
        self._raise_for(status, bits, isa)
        return out.reshape(*x.shape[:-1], n)

    def embedding(
        self,
        ids: torch.Tensor,
        packed: PackedSEFP,
        bits: int,
        *,
        levels: torch.Tensor | None = None,
        isa: str = "auto",
        num_threads: int = 0,
    ) -> torch.Tensor:
        """Rows ``ids`` of ``W_bits`` as float32 ``[*ids.shape, K]`` via the fused gather kernel."""
        if isa not in ISAS:
            raise ValueError(f"unknown isa {isa!r}; expected one of {list(ISAS)}")
        if ids.dtype != torch.int64:
            raise TypeError(f"ids must be int64, got {ids.dtype}")
        flat = ids.reshape(-1).contiguous()
        k = packed.in_features
        out = torch.empty(flat.numel(), k, dtype=torch.float32)
        planes = [p.contiguous() for p in (*packed.planes(), packed.exponents)]
        table = self._levels(levels)
        bad = _I64(-1)
        status = self._lib.otaro_sefp_embedding(
            _ptr(flat), flat.numel(), *(_ptr(p) for p in planes), packed.out_features, k, packed.num_groups,
            _ptr(table), int(bits), _ptr(out), int(num_threads), ISAS[isa], ctypes.byref(bad),
        )  # fmt: skip
        if status == _STATUS_INVALID_INDEX:
            raise IndexError(
                f"otaro sefp_embedding kernel: id {int(flat[bad.value])} at position {bad.value} is outside "
                f"[0, {packed.out_features})"
            )
        self._raise_for(status, bits, isa, "sefp_embedding")
        return out.reshape(*ids.shape, k)

    def time_linear_stream(
        self,
        x: torch.Tensor,
        weights: list[PackedSEFP],
        bits: int,
        *,
        repeats: int = 1,
        levels: torch.Tensor | None = None,
        isa: str = "auto",
        num_threads: int = 0,
        act_int8_max_bits: int = 0,
    ) -> torch.Tensor:
        """Seconds of each call (float64 ``[repeats * len(weights)]``): ``repeats`` passes of one call per
        weight in ``weights`` (same shape), timed in C++.

        For benchmarks: weights that together exceed the last-level cache make every call read its
        weight from DRAM, as a decode step does layer after layer.
        """
        if not weights or any(w.planes()[0].shape != weights[0].planes()[0].shape for w in weights):
            raise ValueError("time_linear_stream needs one or more weights of the same shape")
        x2 = x.reshape(-1, x.shape[-1]).contiguous().to(torch.float32)
        y = torch.empty(x2.shape[0], weights[0].out_features, dtype=torch.float32)
        table = self._levels(levels)
        views = (WeightView * len(weights))()
        keep = []
        for view, w in zip(views, weights):
            planes = [p.contiguous() for p in (*w.planes(), w.exponents)]
            keep.append(planes)
            view.p0, view.p1, view.p2, view.p3, view.exponents = (_ptr(p) for p in planes)
            view.out_features, view.in_features, view.num_groups = w.out_features, x.shape[-1], w.num_groups
            view.levels = _ptr(table)
        seconds = torch.empty(int(repeats) * len(weights), dtype=torch.float64)
        status = self._lib.otaro_time_linear_stream(
            _ptr(x2), x2.shape[0], views, len(weights), int(bits), _ptr(y), int(num_threads), ISAS[isa],
            int(repeats), _ptr(seconds), int(act_int8_max_bits),
        )  # fmt: skip
        self._raise_for(-status, bits, isa)
        return seconds

    def time_read(self, buffer: torch.Tensor, chunk: int = 2**18) -> torch.Tensor:
        """Seconds of each ``chunk``-byte piece of one sequential read of ``buffer`` (the read roofline)."""
        flat = buffer.contiguous().reshape(-1).view(torch.uint8)
        chunk = max(64, chunk // 64 * 64)
        seconds = torch.empty(flat.numel() // chunk, dtype=torch.float64)
        self._lib.otaro_time_read(_ptr(flat), flat.numel(), chunk, _ptr(seconds))
        return seconds
