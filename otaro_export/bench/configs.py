"""What ``otaro bench`` measures: the configurations and the run sizes (full and ``--quick``)."""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from pathlib import Path

from otaro_export.bench.artifacts import ArtifactSpec
from otaro_export.errors import OtaroError
from otaro_export.sefp import SUPPORTED_BITS, check_bits

DEFAULT_PROMPT = "Explain in one paragraph why the sky is blue, and what makes sunsets red."


@dataclass(frozen=True)
class RunConfig:
    """One row family of the table: an artifact run a certain way."""

    label: str  # shown in the table, e.g. "onnx fused"
    artifact: ArtifactSpec
    #: ONNX only: False runs the model-local function body on stock onnxruntime (no kernel library)
    use_library: bool | None = None
    #: the portable fallbacks are far slower: they get the smaller ``slow_*`` run sizes
    slow: bool = False

    @property
    def runtime(self) -> str:
        return self.artifact.target

    @property
    def is_fp32(self) -> bool:
        return self.artifact.weights == "fp32"


ONNX_FUSED = RunConfig("onnx fused", ArtifactSpec("onnx", "sefp", "fused"))
#: the same ONNX file, run by stock onnxruntime through the SEFPLinear function body
ONNX_FUNCTION = RunConfig(
    "onnx portable (function)", ArtifactSpec("onnx", "sefp", "fused"), use_library=False, slow=True
)
ONNX_FP32 = RunConfig("onnx fp32", ArtifactSpec("onnx", "fp32"))
ET_FUSED = RunConfig("executorch fused", ArtifactSpec("executorch", "sefp", "fused"))
ET_PORTABLE = RunConfig("executorch portable", ArtifactSpec("executorch", "sefp", "portable"), slow=True)
ET_FP32 = RunConfig("executorch fp32", ArtifactSpec("executorch", "fp32"))


@dataclass
class BenchSettings:
    model: str = "default"
    checkpoint: Path | None = None
    output: Path = Path("bench-results")
    bits: tuple[int, ...] = SUPPORTED_BITS
    targets: tuple[str, ...] = ("onnx", "executorch")
    portable: bool = True  # also measure the no-library fallbacks
    llama_cpp: bool = True
    #: the onnxruntime-genai int4 anchor (when the package is installed)
    ort_genai: bool = True
    accuracy: bool = True
    threads: int = 2
    prompt: str = DEFAULT_PROMPT
    new_tokens: int = 128
    runs: int = 5
    max_seq_len: int = 256
    #: portable fallbacks: seconds per token, so fewer tokens, runs and precisions
    slow_new_tokens: int = 16
    slow_runs: int = 1
    slow_bits: tuple[int, ...] = (3, 8)
    switch_steps: int = 32
    switch_rounds: int = 3
    eval_samples: int = 12
    eval_gen_tokens: int = 64
    cache_dir: Path | None = None
    #: False: only cached exports are used; a configuration whose export is missing is reported, not exported
    export_missing: bool = True
    job_timeout_s: float = 1800.0
    quick: bool = False
    extra_notes: list[str] = field(default_factory=list)

    def validate(self) -> None:
        self.bits = tuple(check_bits(b) for b in self.bits)
        self.slow_bits = tuple(b for b in self.slow_bits if b in self.bits) or self.bits[:1]
        for t in self.targets:
            if t not in ("onnx", "executorch"):
                raise OtaroError(f"unknown target {t!r}; choose from onnx, executorch")
        if self.threads < 1:
            raise OtaroError("--threads must be >= 1")
        for name in (
            "new_tokens",
            "runs",
            "slow_new_tokens",
            "slow_runs",
            "switch_steps",
            "switch_rounds",
            "eval_samples",
        ):
            if getattr(self, name) < 1:
                raise OtaroError(f"{name.replace('_', '-')} must be >= 1")
        if self.new_tokens < 2:
            raise OtaroError("--new-tokens must be >= 2 (decode speed counts the tokens after the first)")

    def run_configs(self) -> list[RunConfig]:
        configs = []
        if "onnx" in self.targets:
            configs += [ONNX_FUSED] + ([ONNX_FUNCTION] if self.portable else []) + [ONNX_FP32]
        if "executorch" in self.targets:
            configs += [ET_FUSED] + ([ET_PORTABLE] if self.portable else []) + [ET_FP32]
        return configs

    def artifacts(self) -> list[ArtifactSpec]:
        seen: list[ArtifactSpec] = []
        for c in self.run_configs():
            if c.artifact not in seen:
                seen.append(c.artifact)
        return seen


def quick_settings(settings: BenchSettings) -> BenchSettings:
    """A few minutes on cached artifacts: E5M3 and E5M8 only, short generations, no portable fallbacks."""
    return replace(
        settings,
        bits=tuple(b for b in (3, 8) if b in settings.bits) or settings.bits[:1],
        portable=False,
        new_tokens=32,
        runs=2,
        switch_steps=16,
        switch_rounds=2,
        eval_samples=2,
        eval_gen_tokens=32,
        quick=True,
    )
