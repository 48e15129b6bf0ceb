"""The export driver shared by both targets: load, apply checkpoint, convert, write, manifest.

Target writers live beside this file (``onnx_export.py``, ``executorch_export.py``)
and share the graph passes in ``otaro_export.passes``: one lowering, two writers.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from otaro_export.convert import check_supported
from otaro_export.errors import OtaroError
from otaro_export.export.sefp_recipe import SEFPRecipe, default_recipe
from otaro_export.manifest import KERNEL_MODES, TARGETS, Manifest


@dataclass
class ExportOptions:
    target: str
    model: str = "default"
    output: Path = Path("out")
    checkpoint: Path | None = None
    kernels: str = "fused"
    #: how the linears become SEFP: reconstruction rule, exponent rule, lm_head and floors
    recipe: SEFPRecipe = field(default_factory=default_recipe)
    max_seq_len: int = 512
    #: ExecuTorch only: keep the weights in model.ptd beside model.pte (program-data separation)
    external_weights: bool = False
    #: ExecuTorch only: attention by ExecuTorch's LLM custom ops ("llm-ops", the default) or standard ops
    #: ("portable": any ExecuTorch runtime, e.g. the aarch64 one); None: the default
    attention: str | None = None
    #: write into a non-empty ``output`` that holds no otaro-export manifest (see export/output_dir.py)
    force: bool = False

    @property
    def quantize_lm_head(self) -> bool:
        return self.recipe.lm_head == "sefp"

    def validate(self) -> None:
        self.recipe.validate()
        if self.target not in TARGETS:
            raise OtaroError(f"unknown target {self.target!r}; choose one of {', '.join(TARGETS)}")
        if self.kernels not in KERNEL_MODES:
            raise OtaroError(f"unknown kernels mode {self.kernels!r}; choose one of {', '.join(KERNEL_MODES)}")
        if self.attention is not None:
            from otaro_export.export.executorch_decoder import ATTENTION_MODES

            if self.target != "executorch":
                raise OtaroError("--attention applies to --target executorch only (ONNX has one attention graph)")
            if self.attention not in ATTENTION_MODES:
                raise OtaroError(
                    f"unknown --attention {self.attention!r}; choose llm-ops (ExecuTorch's LLM custom ops) or "
                    "portable (standard ops only: runs on any ExecuTorch runtime, e.g. aarch64)"
                )
        if not 2 <= self.max_seq_len <= 32768:
            raise OtaroError(f"--max-seq-len must be in 2..32768, got {self.max_seq_len}")


def export_model(options: ExportOptions, log: Callable[[str], None] = print, loaded=None) -> Path:
    """Run the whole export; returns the path of the written manifest.json.

    ``loaded`` (a :class:`otaro_export.models.LoadedModel`) skips loading, for
    tests and for callers that already hold the model.
    """
    options.validate()
    from dataclasses import replace

    tuned_run = None
    if options.checkpoint is not None:
        # A tuned run's floors and int8 activations are the model's defaults: it was trained through them.
        from otaro_export.train.checkpoint import read_meta, resolve_checkpoint

        checkpoint = resolve_checkpoint(options.checkpoint)
        meta = read_meta(checkpoint)
        recipe, taken = options.recipe.with_tuned_run(meta, log)
        options = replace(options, recipe=recipe)
        tuned_run = {"checkpoint": checkpoint.name, "step": meta.get("step"), "from_run": taken}
    options = replace(options, recipe=options.recipe.for_target(options.target))  # target defaults resolved
    options.recipe.validate()
    from otaro_export.export.output_dir import Staging
    from otaro_export.models import load_model

    # --output is checked (and a staging directory made in it) before minutes of work, not after.
    with Staging(Path(options.output), force=options.force) as staging:
        t0 = time.perf_counter()
        if loaded is None:
            loaded = load_model(options.model)
            log(f"loaded {loaded.source} in {time.perf_counter() - t0:.1f}s")
        check_supported(loaded.model)
        if options.checkpoint is not None:
            from otaro_export.train.checkpoint import load_tuned_weights

            load_tuned_weights(loaded.model, checkpoint)  # the checkpoint whose record the recipe took
            log(f"applied tuned weights from {options.checkpoint}")

        if options.target == "onnx":
            from otaro_export.export.onnx_export import export_onnx as write
        else:
            from otaro_export.export.executorch_export import export_executorch as write
        out = staging.path  # everything is written here and moved into --output at the end
        manifest: Manifest = write(loaded, options, out, log)
        if tuned_run is not None:
            manifest.extra["tuned_run"] = tuned_run  # which SEFP settings came from the run, not the defaults

        if loaded.tokenizer is not None:
            loaded.tokenizer.save_pretrained(str(out / manifest.tokenizer))
        manifest.save(out)
        path = staging.commit(manifest)
    log(f"export finished in {time.perf_counter() - t0:.1f}s")
    return path
