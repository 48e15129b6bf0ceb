"""``manifest.json``: what an exported artifact is and what it needs to run (DESIGN.md section 5)."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path

from otaro_export import __version__
from otaro_export.errors import ArtifactError
from otaro_export.packing import PACKING_VERSION
from otaro_export.sefp import BITS_PER_WEIGHT_AT_REST, GROUP_SIZE, SUPPORTED_BITS

MANIFEST_NAME = "manifest.json"
FORMAT_VERSION = 1
TARGETS = ("onnx", "executorch")  # "torch" is the in-memory reference, never written
KERNEL_MODES = ("fused", "portable")


@dataclass
class Manifest:
    target: str  # "onnx" | "executorch"
    artifact: str  # file name of the model beside the manifest
    kernels: str  # "fused" | "portable"
    #: native library the artifact needs ("onnxruntime" / "executorch" custom-op library), or None
    kernel_library: str | None
    quantized_layers: list[str]
    inputs: list[str]
    outputs: list[str]
    model: dict  # model_type, vocab_size, num_layers, max_seq_len, eos_token_ids, source, ...
    precisions: list[int] = field(default_factory=lambda: list(SUPPORTED_BITS))
    tokenizer: str = "tokenizer"
    format_version: int = FORMAT_VERSION
    sefp: dict = field(
        default_factory=lambda: {
            "group_size": GROUP_SIZE,
            "exponent_bits": 5,
            "stored_mantissa_bits": 8,
            "packing_version": PACKING_VERSION,
            "bits_per_weight_at_rest": BITS_PER_WEIGHT_AT_REST,
        }
    )
    extra: dict = field(default_factory=dict)
    created_by: str = f"otaro-export {__version__}"

    def save(self, directory: str | Path) -> Path:
        path = Path(directory) / MANIFEST_NAME
        path.write_text(json.dumps(asdict(self), indent=2) + "\n")
        return path

    @classmethod
    def load(cls, directory: str | Path) -> Manifest:
        path = Path(directory) / MANIFEST_NAME
        if not path.is_file():
            raise ArtifactError(f"no {MANIFEST_NAME} in {directory}: was this directory written by otaro-export?")
        try:
            data = json.loads(path.read_text())
        except json.JSONDecodeError as exc:
            raise ArtifactError(f"{path} is not valid JSON ({exc})") from exc
        if not isinstance(data, dict):
            raise ArtifactError(f"{path}: expected a JSON object")
        version = data.get("format_version")
        if version != FORMAT_VERSION:
            raise ArtifactError(
                f"{path}: manifest format version {version!r} is not supported by this otaro-export "
                f"(expects {FORMAT_VERSION}); re-export the model or upgrade otaro-export"
            )
        known = set(cls.__dataclass_fields__)
        missing = [
            k
            for k in ("target", "artifact", "kernels", "quantized_layers", "inputs", "outputs", "model")
            if k not in data
        ]
        if missing:
            raise ArtifactError(f"{path}: missing field(s) {missing}")
        manifest = cls(**{k: v for k, v in data.items() if k in known})
        if manifest.target not in TARGETS:
            raise ArtifactError(f"{path}: unknown target {manifest.target!r} (expected one of {TARGETS})")
        return manifest
