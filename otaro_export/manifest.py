"""``manifest.json``: what an exported artifact is and what it needs to run (docs/FORMAT.md §7).

:meth:`Manifest.load` checks every field a runtime relies on, so a damaged or
hand-edited manifest is one clear :class:`ArtifactError`: paths it names
(``artifact``, ``tokenizer``, ``extra.data_files``, ``files``) must stay inside
the artifact directory, and the kernel library is one of a fixed set, so no
manifest can make a runtime read or load anything from elsewhere.
"""

from __future__ import annotations

import json
import os
import re
import warnings
from dataclasses import asdict, dataclass, field
from pathlib import Path

from otaro_export import __version__
from otaro_export.errors import ArtifactError, OtaroWarning
from otaro_export.packing import PACKING_VERSION
from otaro_export.sefp import BITS_PER_WEIGHT_AT_REST, GROUP_SIZE, SUPPORTED_BITS

MANIFEST_NAME = "manifest.json"
FORMAT_VERSION = 2  # 2: SEFP lm_head + embedding, reconstruction tables, fused ONNX graph with shared KV buffers
TARGETS = ("onnx", "executorch")  # "torch" is the in-memory reference, never written
KERNEL_MODES = ("fused", "portable")
#: the native kernel library each target may ask for (None: the stock runtime runs the artifact)
KERNEL_LIBRARIES = {"onnx": (None, "onnxruntime"), "executorch": (None, "executorch")}
#: an ExecuTorch manifest's extra.runtime_ops entry: the program calls ExecuTorch's llama:: LLM custom ops
LLM_CUSTOM_OPS = "executorch.extension.llm.custom_ops"
_ARTIFACT_SUFFIX = {"onnx": ".onnx", "executorch": ".pte"}
_HEX64 = re.compile(r"^[0-9a-f]{64}$")


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
    #: every file of the artifact, relative to its directory -> {"size": bytes, "sha256": hex}
    files: dict = field(default_factory=dict)

    def payload_files(self, directory: str | Path) -> list[str]:
        """The files this artifact consists of (model, weight data, tokenizer), relative to ``directory``."""
        directory = Path(directory)
        names = [self.artifact, *(self.extra.get("data_files") or [])]
        if self.target == "onnx":
            names += _onnx_external_data(directory / self.artifact)
        tok_dir = directory / self.tokenizer
        if tok_dir.is_dir():
            names += [p.relative_to(directory).as_posix() for p in sorted(tok_dir.rglob("*")) if p.is_file()]
        return list(dict.fromkeys(names))

    def save(self, directory: str | Path, record_files: bool = True) -> Path:
        """Write ``manifest.json``; ``record_files`` first records the size and digest of every payload file."""
        from otaro_export.integrity import describe

        directory = Path(directory)
        if record_files:
            self.files = {name: describe(directory / name) for name in self.payload_files(directory)}
        path = directory / MANIFEST_NAME
        path.write_text(json.dumps(asdict(self), indent=2) + "\n")
        return path

    def verify_files(self, directory: str | Path, use_cache: bool = True, progress=None) -> list[str]:
        """Check every recorded file (size, then digest); returns the names checked. See :mod:`otaro_export.integrity`.

        A manifest from before digests were recorded loads with a warning (nothing to check against).
        """
        from otaro_export.integrity import check_file

        directory = Path(directory)
        if not self.files:
            warnings.warn(
                f"{directory / MANIFEST_NAME} records no file digests (exported by an older otaro-export), so its "
                "files are not checked for damage: re-export it to get the checks",
                OtaroWarning,
                stacklevel=3,
            )
            return []
        required = [self.artifact, *(self.extra.get("data_files") or [])]
        unrecorded = [name for name in required if name not in self.files]
        if unrecorded:
            raise ArtifactError(f"{directory / MANIFEST_NAME} records no digest for {unrecorded}: re-export")
        for name, record in self.files.items():
            check_file(directory, name, record, use_cache=use_cache, progress=progress)
        return list(self.files)

    @classmethod
    def load(cls, directory: str | Path) -> Manifest:
        path = Path(directory) / MANIFEST_NAME
        if not path.is_file():
            raise ArtifactError(f"no {MANIFEST_NAME} in {directory}: was this directory written by otaro-export?")
        try:
            data = json.loads(path.read_bytes().decode("utf-8"))
        except (UnicodeDecodeError, ValueError, RecursionError) as exc:  # ValueError: JSONDecodeError
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
            for k in (
                "target",
                "artifact",
                "kernels",
                "kernel_library",
                "quantized_layers",
                "inputs",
                "outputs",
                "model",
            )
            if k not in data
        ]
        if missing:
            raise ArtifactError(f"{path}: missing field(s) {missing}")
        _check_fields(data, path)
        manifest = cls(**{k: v for k, v in data.items() if k in known})
        for name in manifest.referenced_paths():
            inside(Path(directory), name, path)
        return manifest

    def referenced_paths(self) -> list[str]:
        return [self.artifact, self.tokenizer, *(self.extra.get("data_files") or []), *self.files]


def inside(directory: Path, name: str, where: str | Path) -> Path:
    """``directory/name``, or an ArtifactError if ``name`` is absolute or resolves (symlinks too) outside ``directory``."""
    if not isinstance(name, str) or not name or "\x00" in name:
        raise ArtifactError(f"{where}: {name!r} is not a file name")
    if os.path.isabs(name) or Path(name).is_absolute():
        raise ArtifactError(f"{where}: {name!r} is an absolute path; an artifact only names files in its directory")
    root = os.path.realpath(directory)
    target = os.path.realpath(os.path.join(root, name))
    if os.path.commonpath([root, target]) != root or target == root:
        raise ArtifactError(f"{where}: {name!r} points outside the artifact directory {directory}")
    return Path(directory) / name


def _onnx_external_data(path: Path) -> list[str]:
    """The external-data files ``path`` (an .onnx graph) names: part of the artifact, so digested too."""
    if not path.is_file():
        return []
    import onnx

    try:
        model = onnx.load(str(path), load_external_data=False)
    except Exception as exc:  # protobuf's DecodeError and friends
        raise ArtifactError(f"{path} is not a readable ONNX graph ({type(exc).__name__}: {exc})") from exc
    names = {e.value for t in model.graph.initializer for e in t.external_data if e.key == "location"}
    return sorted(Path(n).as_posix() for n in names)


def _is_int(value, low: int = 1) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= low


def _is_str_list(value) -> bool:
    return isinstance(value, list) and all(isinstance(v, str) for v in value)


#: ``model`` keys every runtime reads, each with its check
#: sanity bounds of the model section (far above any model this project exports on a device)
_MAX_CACHE_BYTES = 64 << 30
_MAX_VOCAB = 1 << 24
_MODEL_FIELDS = {
    "vocab_size": ("a positive integer", _is_int),
    "num_layers": ("a positive integer", _is_int),
    "num_kv_heads": ("a positive integer", _is_int),
    "head_dim": ("a positive integer", _is_int),
    "max_seq_len": ("an integer >= 2", lambda v: _is_int(v, 2)),
    "eos_token_ids": ("a list of token ids", lambda v: isinstance(v, list) and all(_is_int(i, 0) for i in v)),
}


def _check_fields(data: dict, path: Path) -> None:
    """Types and values of every field a runtime relies on: one clear error instead of a crash later."""

    def bad(name: str, expected: str) -> ArtifactError:
        return ArtifactError(f"{path}: {name} must be {expected}, got {data_at(name)!r}")

    def data_at(name: str):
        value = data
        for part in name.split("."):
            value = value.get(part) if isinstance(value, dict) else None
        return value

    target = data["target"]
    if target not in TARGETS:
        raise ArtifactError(f"{path}: unknown target {target!r} (expected one of {TARGETS})")
    for name in ("artifact", "tokenizer", "created_by"):
        if name in data and not isinstance(data[name], str):
            raise bad(name, "a string")
    if not data["artifact"].endswith(_ARTIFACT_SUFFIX[target]):
        raise bad("artifact", f"a {_ARTIFACT_SUFFIX[target]} file name for target {target}")
    if data["kernels"] not in KERNEL_MODES:
        raise bad("kernels", f"one of {KERNEL_MODES}")
    libraries = KERNEL_LIBRARIES[target]
    if data.get("kernel_library") not in libraries:
        raise bad("kernel_library", f"one of {libraries} for target {target}")
    for name in ("quantized_layers", "inputs", "outputs"):
        if not _is_str_list(data[name]):
            raise bad(name, "a list of strings")
    for name in ("model", "sefp", "extra", "files"):
        if name in data and not isinstance(data[name], dict):
            raise bad(name, "a JSON object")
    for key, (expected, ok) in _MODEL_FIELDS.items():
        if not ok(data["model"].get(key)):
            raise bad(f"model.{key}", expected)
    if any(i >= data["model"]["vocab_size"] for i in data["model"]["eos_token_ids"]):
        raise bad("model.eos_token_ids", f"ids below model.vocab_size {data['model']['vocab_size']}")
    m = data["model"]
    cache_bytes = 2 * m["num_layers"] * m["num_kv_heads"] * m["max_seq_len"] * m["head_dim"] * 4
    if cache_bytes > _MAX_CACHE_BYTES or m["vocab_size"] > _MAX_VOCAB:
        # a runtime sizes its KV buffers from these: a damaged value must not become a terabyte allocation
        raise ArtifactError(
            f"{path}: the model section is implausible (a {cache_bytes / 2**30:.0f} GiB KV cache, "
            f"{m['vocab_size']} tokens): damaged or hand-edited? re-export the artifact"
        )
    if "precisions" in data:
        p = data["precisions"]
        valid = isinstance(p, list) and p and all(_is_int(b) and b in SUPPORTED_BITS for b in p)
        if not valid or len(set(p)) != len(p):
            raise bad("precisions", f"a non-empty list of distinct bits among {list(SUPPORTED_BITS)}")
    extra = data.get("extra", {})
    if "data_files" in extra and not _is_str_list(extra["data_files"]):
        raise bad("extra.data_files", "a list of file names")
    if "method" in extra and not isinstance(extra["method"], str):
        raise bad("extra.method", "a string")
    for name, record in data.get("files", {}).items():
        if not (
            isinstance(record, dict)
            and _is_int(record.get("size"), 0)
            and isinstance(record.get("sha256"), str)
            and _HEX64.match(record["sha256"])
        ):
            raise ArtifactError(f'{path}: files["{name}"] must be {{"size": bytes, "sha256": 64 hex digits}}')
