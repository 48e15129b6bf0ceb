"""Quality of an exported artifact itself: KL(FP || artifact) and top-1 agreement per precision.

``otaro eval`` and the bench's accuracy step measure the export's math in torch
(fake-quant). This runs the written file through its runtime session on the
same evaluation samples (the FP model's answers to held-out prompts), so the
numbers cover everything a user gets: encoder, tables, floors, kernels, graph.

    python -m otaro_export.bench.artifact_quality out/smollm2-onnx [--bits 3,4,8]
"""

from __future__ import annotations

import argparse
import math
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from otaro_export.train.evaluation import PrecisionMetrics
from otaro_export.train.losses import kl_to_teacher, next_token_nll, top1_agreement


def artifact_storage(session, teacher: torch.nn.Module) -> dict:
    """The SEFP layers (name -> packed [rows, K]) and precision floors of the artifact ``session`` runs, as
    bench.json ``sefp_storage`` records them for the memory table (:func:`report.read_per_token`).

    An ONNX artifact's come from its initializers and manifest, as the bench reads them; an ExecuTorch
    artifact's from its manifest (``quantized_layers``, ``extra.precision_floors``) and the shapes of
    ``teacher``'s linears, which the export packed.
    """
    from otaro_export.bench.runner import sefp_storage_from_onnx
    from otaro_export.reconstruction import export_units
    from otaro_export.sefp import padded_in_features

    manifest = session.manifest
    if manifest.target == "onnx":
        storage = sefp_storage_from_onnx(session.directory / manifest.artifact)
        if storage is not None:
            return storage
    units = {u.name: u for u in export_units(teacher)}
    missing = [name for name in manifest.quantized_layers if name not in units]
    if missing:
        raise ValueError(f"the artifact's SEFP layers {missing[:3]} are not linears of the float model given")
    layers = {}
    for name in manifest.quantized_layers:
        linears = [teacher.get_submodule(member) for member in units[name].members]
        # K as packed (padded to whole groups), as the ONNX initializers give it
        layers[name] = [sum(m.out_features for m in linears), padded_in_features(linears[0].in_features)]
    return {"layers": layers, "precision_floors": manifest.extra.get("precision_floors", {})}


@torch.no_grad()
def evaluate_artifact(session, teacher: torch.nn.Module, samples, bits=(3, 4, 5, 6, 7, 8)) -> list[PrecisionMetrics]:
    """Metrics of ``session`` (any runtime Session) at each precision against ``teacher`` on ``samples``.

    ``bits_per_weight`` is what each precision reads with the artifact's precision floors, the same count the
    bench's memory table makes (:func:`artifact_storage`, :func:`report.read_per_token`).
    """
    from otaro_export.bench.report import read_per_token

    read = read_per_token(artifact_storage(session, teacher))
    sums = {k: {"nll": 0.0, "kl": 0.0, "top1": 0.0} for k in bits}
    tokens = 0
    for sample in samples:
        ids = torch.tensor([sample.ids], dtype=torch.long)
        mask = torch.zeros_like(ids, dtype=torch.bool)
        mask[0, sample.target_start - 1 : ids.shape[1] - 1] = True  # logits at t predict token t + 1
        n = int(mask.sum())
        if n == 0:
            continue
        t_logprobs = F.log_softmax(teacher(input_ids=ids).logits[mask].float(), dim=-1)
        tokens += n
        for k in bits:
            logits = torch.from_numpy(np.asarray(session.forward(ids.numpy(), k)))
            sums[k]["nll"] += float(next_token_nll(logits, ids, mask)) * n
            sums[k]["kl"] += float(kl_to_teacher(logits, t_logprobs, mask)) * n
            sums[k]["top1"] += float(top1_agreement(logits, t_logprobs, mask)) * n
    if tokens == 0:
        raise ValueError("no scored tokens in the evaluation samples")
    return [
        PrecisionMetrics(
            precision=f"E5M{k}",
            bits=k,
            ppl=math.exp(sums[k]["nll"] / tokens),
            kl=max(0.0, sums[k]["kl"] / tokens),
            top1=sums[k]["top1"] / tokens,
            tokens=tokens,
            bits_per_weight=read[k][0] if read else None,  # None: an artifact with no SEFP layer
        )
        for k in bits
    ]


def main(argv=None) -> int:
    from otaro_export.bench.accuracy import EVAL_SEED
    from otaro_export.models import load_model
    from otaro_export.runtime import load
    from otaro_export.train.evaluation import format_table
    from otaro_export.train.tune_data import EVAL_PROMPTS, self_distillation_samples

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("artifact", type=Path)
    parser.add_argument("--model", default="default", help="the float source model (the teacher)")
    parser.add_argument("--bits", default="3,4,5,6,7,8")
    parser.add_argument("--samples", type=int, default=12)
    parser.add_argument("--gen-tokens", type=int, default=64)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    loaded = load_model(args.model)
    teacher = loaded.model.eval()
    samples = self_distillation_samples(
        teacher, loaded.tokenizer, args.samples, args.gen_tokens, seed=EVAL_SEED, prompts=EVAL_PROMPTS
    )
    session = load(args.artifact, num_threads=args.threads)
    rows = evaluate_artifact(session, teacher, samples, tuple(int(b) for b in args.bits.split(",")))
    print(format_table(rows, f"{args.artifact}: KL(FP || artifact), {rows[0].tokens} scored tokens"))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
