"""Tiny exported ONNX artifacts for tests and examples, exported once per directory and reused.

``tiny_onnx_artifact(model_type, root)`` exports :func:`otaro_export.testing.tiny_causal_lm`
(seed 0) into ``root/<model_type>`` unless a finished export is already there,
and returns ``(directory, loaded_model)``. Tests in different directories share
one export per pytest run by passing the same ``root``.
"""

from __future__ import annotations

from pathlib import Path

from otaro_export.manifest import MANIFEST_NAME

TINY_MAX_SEQ_LEN = 64


def tiny_onnx_artifact(model_type: str, root: Path, kernels: str = "fused"):
    from otaro_export.export.pipeline import ExportOptions, export_model
    from otaro_export.testing import tiny_causal_lm

    loaded = tiny_causal_lm(model_type)
    out = Path(root) / f"{model_type}-{kernels}"
    if not (out / MANIFEST_NAME).is_file():
        options = ExportOptions(target="onnx", output=out, kernels=kernels, max_seq_len=TINY_MAX_SEQ_LEN)
        export_model(options, log=lambda _msg: None, loaded=loaded)
    return out, loaded
