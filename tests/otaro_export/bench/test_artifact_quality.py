"""evaluate_artifact: KL/top-1 of an exported file through its runtime session."""

import pytest
import torch

from otaro_export.bench.artifact_quality import artifact_storage, evaluate_artifact
from otaro_export.bench.report import read_per_token
from otaro_export.bench.runner import sefp_storage_from_onnx
from otaro_export.export.onnx_reference import reference_decoder, reference_logits
from otaro_export.runtime import load
from otaro_export.train.losses import kl_to_teacher
from otaro_export.train.tune_data import Sample


def test_artifact_metrics_equal_the_reference_decoders(tiny_onnx):
    directory, loaded = tiny_onnx("llama")
    teacher = loaded.model.eval()
    samples = [Sample(tuple(range(10, 30)), 5), Sample(tuple(range(40, 52)), 3)]
    rows = {r.bits: r for r in evaluate_artifact(load(directory), teacher, samples, bits=(3, 8))}
    assert rows[3].tokens == 15 + 9  # positions target_start - 1 .. len - 2 of each sample
    assert rows[3].kl > rows[8].kl >= 0 and 0 <= rows[8].top1 <= 1

    kl, n = 0.0, 0  # the same KL from the torch reference of the artifact's stored bits
    for s in samples:
        ids = torch.tensor([s.ids])
        mask = torch.zeros_like(ids, dtype=torch.bool)
        mask[0, s.target_start - 1 : ids.shape[1] - 1] = True
        with torch.no_grad():
            t = torch.log_softmax(teacher(input_ids=ids).logits[mask], -1)
            logits = reference_logits(reference_decoder(directory, teacher, 3), ids)
        kl += float(kl_to_teacher(logits, t, mask)) * int(mask.sum())
        n += int(mask.sum())
    assert rows[3].kl == pytest.approx(kl / n, rel=1e-3)


def test_bits_per_weight_follow_the_artifacts_floors_as_the_memory_table_counts_them(tiny_onnx):
    from dataclasses import replace
    from types import SimpleNamespace

    directory, loaded = tiny_onnx("llama")
    teacher = loaded.model.eval()
    session = load(directory)
    assert session.manifest.extra["precision_floors"]  # the default export floors some layers above E5M3
    rows = {r.bits: r for r in evaluate_artifact(session, teacher, [Sample(tuple(range(10, 20)), 5)], bits=(3, 8))}
    table = read_per_token(sefp_storage_from_onnx(directory / "model.onnx"))  # the bench's memory table
    assert rows[3].bits_per_weight == table[3][0] > 4.125  # floored layers read more than E5M3's planes
    assert rows[8].bits_per_weight == table[8][0] == 9.125
    # an ExecuTorch artifact (no initializers to read): the manifest's layers and floors, the float model's shapes
    pte = SimpleNamespace(directory=directory, manifest=replace(session.manifest, target="executorch"))
    storage = artifact_storage(pte, teacher)
    assert storage["precision_floors"] == session.manifest.extra["precision_floors"]
    assert read_per_token(storage) == table
