"""Per-precision weight-error report of SEFP quantization for a model (``otaro quantize``)."""

from __future__ import annotations

import time
from dataclasses import dataclass, field

import torch
from torch import nn

from otaro_export.convert import select_sefp_linears
from otaro_export.packing import bytes_per_weight_read
from otaro_export.sefp import BITS_PER_WEIGHT_AT_REST, SUPPORTED_BITS, quantize


@dataclass
class PrecisionRow:
    bits: int
    sqnr_db: float
    rel_rmse: float
    bits_per_weight_read: float


@dataclass
class QuantizationReport:
    num_layers: int
    num_weights: int
    quantize_seconds: float
    rows: list[PrecisionRow] = field(default_factory=list)

    def to_dict(self) -> dict:
        return {
            "num_layers": self.num_layers,
            "num_weights": self.num_weights,
            "quantize_seconds": self.quantize_seconds,
            "bits_per_weight_at_rest": BITS_PER_WEIGHT_AT_REST,
            "precisions": [row.__dict__ for row in self.rows],
        }

    def to_table(self) -> str:
        lines = [
            f"SEFP: {self.num_layers} layers, {self.num_weights / 1e6:.1f}M weights, "
            f"quantized in {self.quantize_seconds:.2f}s; {BITS_PER_WEIGHT_AT_REST} bits/weight at rest (one file, all precisions)",
            f"{'precision':<10}{'SQNR dB':>10}{'rel RMSE':>11}{'bits/w read':>13}{'vs fp16':>9}",
        ]
        for r in self.rows:
            lines.append(
                f"{'E5M' + str(r.bits):<10}{r.sqnr_db:>10.2f}{r.rel_rmse:>11.4f}"
                f"{r.bits_per_weight_read:>13.3f}{r.bits_per_weight_read / 16:>9.3f}"
            )
        return "\n".join(lines)


def quantization_report(model: nn.Module, quantize_lm_head: bool = False, progress: bool = False) -> QuantizationReport:
    """Quantize every selected linear (model left unchanged) and aggregate error per precision.

    SQNR is aggregated over all layers: 10*log10(sum ||W||^2 / sum ||W - W_k||^2).
    """
    names = select_sefp_linears(model, quantize_lm_head)
    signal = 0.0
    noise = {b: 0.0 for b in SUPPORTED_BITS}
    num_weights = 0
    elapsed = 0.0
    iterator = names
    if progress:
        from tqdm import tqdm

        iterator = tqdm(names, desc="SEFP quantize", unit="layer")
    with torch.no_grad():
        for name in iterator:
            w = model.get_submodule(name).weight.detach().to(torch.float32)
            t0 = time.perf_counter()
            q = quantize(w, name=f"{name}.weight")
            elapsed += time.perf_counter() - t0
            w64 = w.to(torch.float64)
            signal += float(w64.pow(2).sum())
            num_weights += w.numel()
            for b in SUPPORTED_BITS:
                noise[b] += float((w64 - q.dequantize(b).to(torch.float64)).pow(2).sum())
    rows = []
    for b in SUPPORTED_BITS:
        sqnr = float("inf") if noise[b] == 0 else 10 * torch.log10(torch.tensor(signal / noise[b])).item()
        rel = (noise[b] / signal) ** 0.5 if signal > 0 else 0.0
        rows.append(PrecisionRow(b, sqnr, rel, bytes_per_weight_read(b) * 8))
    return QuantizationReport(len(names), num_weights, elapsed, rows)
