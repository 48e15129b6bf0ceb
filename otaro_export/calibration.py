"""Input statistics of a model's SEFP linears over built-in prompts (for fitted reconstruction and floors).

The calibration text is the FP model's own sampled answers (seeded, no download)
to ``TRAIN_PROMPTS``, the tuning prompts, which are disjoint from the evaluation
prompts ``EVAL_PROMPTS``: the statistics never see the text the quality is measured on.

For every selected linear, a forward pre-hook accumulates ``E[x_i^2]`` over all
attended (non-padding) token positions: the diagonal of the input's second
moment, which weights a weight error by how strongly its input column is driven
(``E||dW x||^2 = sum_ij dW_ij^2 E[x_j^2]`` when the input columns are uncorrelated).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

CALIBRATION_SEED = 0
CALIBRATION_SAMPLES = 16
CALIBRATION_GEN_TOKENS = 48
#: calibration answers and label draws per answer the Fisher of the floor plan uses (docs/QUALITY.md)
FISHER_SAMPLES = 8
FISHER_DRAWS = 1


@dataclass
class InputStats:
    """Second moment of one linear's input over the calibration tokens."""

    second_moment: torch.Tensor  # float64 [K]: mean of x_i^2
    tokens: int

    def importance(self) -> torch.Tensor:
        """``E[x_i^2]`` as float32 ``[K]``: the per-column weight of a weight error."""
        return self.second_moment.to(torch.float32)


def calibration_samples(
    model: nn.Module,
    tokenizer,
    num_samples: int = CALIBRATION_SAMPLES,
    gen_tokens: int = CALIBRATION_GEN_TOKENS,
    seed: int = CALIBRATION_SEED,
    progress: bool = False,
):
    """The FP model's sampled answers to the tuning prompts (deterministic for a model and seed)."""
    from otaro_export.train.tune_data import TRAIN_PROMPTS, self_distillation_samples

    return self_distillation_samples(
        model, tokenizer, num_samples, gen_tokens, seed=seed, prompts=TRAIN_PROMPTS, progress=progress
    )


@torch.no_grad()
def collect_input_stats(
    model: nn.Module, samples, layer_names: list[str], batch_size: int = 4, progress: bool = False
) -> dict[str, InputStats]:
    """``E[x^2]`` per input column of each named ``nn.Linear``, over the samples' attended tokens."""
    from otaro_export.train.tune_data import collate

    if not samples:
        raise ValueError("no calibration samples")
    sums: dict[str, torch.Tensor] = {}
    counts = dict.fromkeys(layer_names, 0)
    current_mask: list[torch.Tensor] = []

    def hook_for(name: str):
        def hook(module, args):
            x = args[0]
            mask = current_mask[0]
            rows = x[mask] if x.shape[:-1] == mask.shape else x.reshape(-1, x.shape[-1])
            rows = rows.to(torch.float64)
            sums[name] = sums.get(name, 0) + rows.pow(2).sum(0)
            counts[name] += rows.shape[0]

        return hook

    handles = []
    for name in layer_names:
        module = model.get_submodule(name)
        if not isinstance(module, nn.Linear):
            raise TypeError(f"{name} is a {type(module).__name__}, not an nn.Linear")
        handles.append(module.register_forward_pre_hook(hook_for(name)))
    device = next(model.parameters()).device
    starts = range(0, len(samples), batch_size)
    if progress:
        from tqdm import tqdm

        starts = tqdm(starts, desc="calibration", unit="batch")
    was_training = model.training
    model.eval()
    try:
        for start in starts:
            batch = collate(samples, list(range(start, min(start + batch_size, len(samples)))), device)
            current_mask[:] = [batch.attention_mask.bool()]
            model(input_ids=batch.input_ids, attention_mask=batch.attention_mask)
    finally:
        for handle in handles:
            handle.remove()
        model.train(was_training)
    missing = [name for name in layer_names if counts[name] == 0]
    if missing:
        raise RuntimeError(f"calibration never reached {missing[:3]} ({len(missing)} layers)")
    return {name: InputStats((sums[name] / counts[name]).cpu(), counts[name]) for name in layer_names}


def model_input_stats(
    model: nn.Module,
    tokenizer,
    layer_names: list[str],
    num_samples: int = CALIBRATION_SAMPLES,
    gen_tokens: int = CALIBRATION_GEN_TOKENS,
    seed: int = CALIBRATION_SEED,
    progress: bool = False,
) -> dict[str, InputStats]:
    """Generate the built-in calibration text with ``model`` and collect its linears' input statistics."""
    samples = calibration_samples(model, tokenizer, num_samples, gen_tokens, seed, progress)
    return collect_input_stats(model, samples, layer_names, progress=progress)


def fisher_diagonal(
    model: nn.Module, samples, layer_names: list[str], draws: int = FISHER_DRAWS, seed: int = CALIBRATION_SEED
) -> dict[str, torch.Tensor]:
    """Diagonal Fisher information of each named linear's weight, per scored token (float32, weight-shaped).

    ``KL(P_W || P_{W+dW}) ~= 1/2 * sum F * dW**2`` per token for a small ``dW``: the sensitivity
    of the model's next-token distribution to each weight. Estimated with labels sampled from
    the model itself (the true Fisher, not the empirical one): for every calibration sequence and
    draw, the squared gradient of ``sum_t log p(y_t)`` with each ``y_t`` drawn independently, which
    is unbiased because the cross terms of independent draws have zero mean. Seeded, deterministic.
    """
    from otaro_export.train.tune_data import collate

    if not samples:
        raise ValueError("no calibration samples")
    device = next(model.parameters()).device
    weights = {name: model.get_submodule(name).weight for name in layer_names}
    fisher = {name: torch.zeros_like(w, dtype=torch.float32) for name, w in weights.items()}
    requires = {name: w.requires_grad for name, w in weights.items()}
    generator = torch.Generator().manual_seed(seed)
    tokens = 0
    was_training = model.training
    model.eval()
    try:
        for w in weights.values():
            w.requires_grad_(True)
        for index in range(len(samples)):
            batch = collate(samples, [index], device)
            mask = batch.attention_mask.bool()
            tokens += int(mask.sum())
            for _ in range(draws):
                model.zero_grad(set_to_none=True)
                logits = model(input_ids=batch.input_ids, attention_mask=batch.attention_mask).logits[mask]
                logp = torch.log_softmax(logits.float(), dim=-1)
                labels = torch.multinomial(logp.detach().exp().cpu(), 1, generator=generator).to(device)
                logp.gather(-1, labels).sum().backward()
                for name, w in weights.items():
                    if w.grad is not None:
                        fisher[name] += w.grad.detach().float().pow(2) / draws
    finally:
        model.zero_grad(set_to_none=True)
        for name, w in weights.items():
            w.requires_grad_(requires[name])
        model.train(was_training)
    return {name: f / max(1, tokens) for name, f in fisher.items()}
