"""Write the native demo's model file: a small stack of SEFP linears + input vectors.

    python examples/native/write_demo_model.py demo_model.sefpdemo

The layers are random (a stand-in for a model's weights): the demo is about the
runtime contract (one mmap'd copy, precision per call, fewer bytes at lower
precision), not about what the numbers mean. Layout: a FileHeader, one
LayerRecord per layer (both defined in sefp_demo.cc), then each plane of each
layer on its own 64 KiB boundary, so the mapping's resident size shows exactly
which planes a precision read.
"""

from __future__ import annotations

import argparse
import struct
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from otaro_export.packing import PLANE_NAMES, PackedSEFP, pack
from otaro_export.sefp import SEFPWeight, quantize

MAGIC = b"OTSEFPD1"
VERSION = 1
ALIGN = 64 * 1024  # >= the kernel's fault-around window: planes never share a resident block
HEADER = struct.Struct("<8sIIIIQ")
LAYER = struct.Struct("<qqqQQQQQQII")
#: (in_features, out_features, relu) of the default stack; 1000 is not a multiple of 64 (padded groups)
DEFAULT_DIMS = ((1024, 2048, True), (2048, 1000, True), (1000, 8, False))


@dataclass
class DemoLayer:
    weight: SEFPWeight
    packed: PackedSEFP
    bias: np.ndarray  # float32 [out]
    relu: bool


def make_layers(dims=DEFAULT_DIMS, seed: int = 0) -> list[DemoLayer]:
    g = torch.Generator().manual_seed(seed)
    layers = []
    for i, (k, n, relu) in enumerate(dims):
        w = torch.randn(n, k, generator=g) / k**0.5
        q = quantize(w, f"layer{i}.weight")
        bias = (torch.randn(n, generator=g) * 0.1).numpy().astype(np.float32)
        layers.append(DemoLayer(q, pack(q), bias, relu))
    return layers


def make_inputs(input_dim: int, count: int = 3, seed: int = 1) -> np.ndarray:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(count, input_dim, generator=g).numpy().astype(np.float32)


def reference_logits(layers: list[DemoLayer], x: np.ndarray, bits: int) -> np.ndarray:
    """The torch reference: exact dequantization at ``bits``, then float32 linear (+ReLU)."""
    h = torch.from_numpy(x).reshape(1, -1)
    for layer in layers:
        h = torch.nn.functional.linear(h, layer.weight.dequantize(bits), torch.from_numpy(layer.bias))
        if layer.relu:
            h = torch.relu(h)
    return h[0].numpy()


def write_demo_model(path: str | Path, layers: list[DemoLayer], inputs: np.ndarray) -> dict[str, int]:
    """Write the file; returns the byte count of each plane kind summed over layers (for checks)."""
    blobs: list[bytes] = []
    offset = HEADER.size + LAYER.size * len(layers)
    records, plane_bytes = [], dict.fromkeys((*PLANE_NAMES, "exponents"), 0)

    def place(data: bytes) -> int:
        nonlocal offset
        start = -(-offset // ALIGN) * ALIGN
        blobs.append(b"\0" * (start - offset) + data)
        offset = start + len(data)
        return start

    for layer in layers:
        p = layer.packed
        offsets = {}
        for name in (*PLANE_NAMES, "exponents"):
            data = getattr(p, name).contiguous().numpy().tobytes()
            plane_bytes[name] += len(data)
            offsets[name] = place(data)
        bias_at = place(layer.bias.astype("<f4").tobytes())
        records.append(
            LAYER.pack(
                p.out_features,
                p.in_features,
                p.num_groups,
                *(offsets[n] for n in PLANE_NAMES),
                offsets["exponents"],
                bias_at,
                int(layer.relu),
                0,
            )
        )
    inputs_at = place(np.ascontiguousarray(inputs, dtype="<f4").tobytes())
    header = HEADER.pack(MAGIC, VERSION, len(layers), inputs.shape[1], inputs.shape[0], inputs_at)
    Path(path).write_bytes(header + b"".join(records) + b"".join(blobs))
    return plane_bytes


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("output", type=Path)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    layers = make_layers(seed=args.seed)
    sizes = write_demo_model(args.output, layers, make_inputs(layers[0].packed.in_features))
    print(f"wrote {args.output} ({args.output.stat().st_size} bytes; plane bytes {sizes})")


if __name__ == "__main__":
    main()
