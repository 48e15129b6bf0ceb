"""``otaro verify``: check everything about an exported artifact, without trusting any cache.

Checks, in order (each later one relies on the earlier ones):

1. ``manifest``: fields and types, paths inside the directory, kernel library from the fixed set;
2. ``files``: every recorded file re-hashed (never answered from the verified-files cache);
3. ``tokenizer``: loads with no code from the artifact and round-trips a short text;
4. ``run`` (optional): the runtime loads the artifact (its kernel library too) and, at every
   precision it serves, the logits of a short sequence have the right shape and are finite;
   decoding the same tokens one at a time through the KV cache gives the same logits; and
   where layers are SEFP, E5M3 and E5M8 differ (the ``bits`` input reaches the kernels).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from otaro_export.errors import ArtifactError

#: incremental-vs-full logits: float32 accumulation order differs; a broken cache is off by O(1)
_KV_TOLERANCE = 1e-2


@dataclass
class VerifyReport:
    directory: Path
    checks: list[tuple[str, str]] = field(default_factory=list)  # (check, what was found)


def verify_artifact(
    path: str | Path, run: bool = True, log: Callable[[str], None] = lambda _line: None, progress=None
) -> VerifyReport:
    """Run every check on the artifact at ``path``; raise :class:`ArtifactError` at the first failure."""
    from otaro_export.runtime import _resolve, load, load_tokenizer

    directory, manifest = _resolve(path)
    report = VerifyReport(directory)

    def ok(check: str, found: str) -> None:
        report.checks.append((check, found))
        log(f"ok  {check:<10} {found}")

    quantized = len(manifest.quantized_layers)
    ok(
        "manifest",
        f"{manifest.target}, {manifest.kernels} kernels, precisions {manifest.precisions}, {quantized} SEFP layers",
    )
    if not manifest.files:
        raise ArtifactError(f"{directory}/manifest.json records no file digests: re-export it to make it checkable")
    manifest.verify_files(directory, use_cache=False, progress=progress)
    size = sum(r["size"] for r in manifest.files.values())
    ok("files", f"{len(manifest.files)} files, {size / 2**20:.1f} MiB, every sha256 as recorded")
    tokenizer = load_tokenizer(directory, manifest)
    if tokenizer is not None:
        text = "Hello, world"
        if tokenizer.decode(tokenizer(text, add_special_tokens=False)["input_ids"]) != text:
            raise ArtifactError(f"the tokenizer in {directory / manifest.tokenizer} does not round-trip {text!r}")
        ok("tokenizer", f"{type(tokenizer).__name__}, no code from the artifact")
    if not run:
        return report

    session = load(directory, verify=False)  # just verified, without the cache
    vocab = manifest.model["vocab_size"]
    length = min(8, session.max_seq_len)
    ids = (np.arange(length, dtype=np.int64)[None] * 7919 + 11) % vocab
    outputs = {}
    for bits in session.precisions:
        outputs[bits] = session.forward(ids, bits)  # the session checks shape and finiteness
    bits = session.precisions[-1]
    with session._exclusive():
        session._reset()
        steps = [session._run_step(ids[:, i : i + 1], i, bits) for i in range(length)]
    error = float(np.abs(np.concatenate(steps, axis=1) - outputs[bits]).max())
    if error > _KV_TOLERANCE * max(1.0, float(np.abs(outputs[bits]).max())):
        raise ArtifactError(f"decoding token by token differs from the full sequence by {error:.3g} at E5M{bits}")
    low, high = min(outputs), max(outputs)
    if quantized and low != high and np.array_equal(outputs[low], outputs[high]):
        raise ArtifactError(f"E5M{low} and E5M{high} give identical logits: the precision input is ignored")
    ok("run", f"{session!r}: finite logits at {sorted(outputs)}, KV cache matches, precisions differ")
    return report
