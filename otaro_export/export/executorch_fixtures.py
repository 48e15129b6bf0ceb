"""Tiny exported ``.pte`` artifacts for tests and examples, exported once per directory and reused.

``tiny_executorch_artifact(root, model_type, kernels, num_layers, external_weights)``
exports :func:`otaro_export.testing.tiny_causal_lm` (seed 0) into a directory
under ``root`` named by those settings unless a finished export is already
there, and returns ``(directory, loaded_model)`` (the model is the float one:
convert a copy to get the torch reference). Tests in different directories
share one export per pytest run by passing the same ``root``.
"""

from __future__ import annotations

from pathlib import Path

from otaro_export.manifest import MANIFEST_NAME

TINY_MAX_SEQ_LEN = 32


def tiny_executorch_artifact(
    root: Path,
    model_type: str = "llama",
    kernels: str = "fused",
    num_layers: int = 2,
    external_weights: bool = False,
):
    from otaro_export.export.pipeline import ExportOptions, export_model
    from otaro_export.testing import tiny_causal_lm

    loaded = tiny_causal_lm(model_type, num_hidden_layers=num_layers)
    name = f"{model_type}-{num_layers}l-{kernels}{'-ptd' if external_weights else ''}"
    out = Path(root) / name
    if not (out / MANIFEST_NAME).is_file():
        options = ExportOptions(
            target="executorch",
            output=out,
            kernels=kernels,
            max_seq_len=TINY_MAX_SEQ_LEN,
            external_weights=external_weights,
        )
        export_model(options, log=lambda _msg: None, loaded=loaded)
        loaded = tiny_causal_lm(model_type, num_hidden_layers=num_layers)  # export may have touched the config
    return out, loaded
