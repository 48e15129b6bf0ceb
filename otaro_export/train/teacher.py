"""The full-precision teacher: next-token log-probabilities of the untuned FP model.

Tuning minimises the KL divergence between the fake-quantized student and
the original FP model. The teacher never changes, so when the training set's
scored positions fit in ``cache_bytes`` their log-probs are computed once
(float16; the exp/KL is done in float32) and the teacher model is dropped;
otherwise they are recomputed each step from a frozen teacher copy.
"""

from __future__ import annotations

import torch
from torch.nn import functional as F

from otaro_export.train.losses import scored_logits
from otaro_export.train.tune_data import Batch, Sample, collate

DEFAULT_CACHE_BYTES = 3 * 2**30


def fits_cache(samples: list[Sample], vocab_size: int, cache_bytes: int = DEFAULT_CACHE_BYTES) -> bool:
    """Whether the float16 log-probs of every scored position fit ``cache_bytes``."""
    scored = sum(len(s.ids) - s.target_start for s in samples)
    return scored * vocab_size * 2 <= cache_bytes


class FPTeacher:
    """``teacher`` may be the model about to be tuned when the cache fits: it is only read here, before tuning.

    Otherwise it must be a frozen copy, kept and run every step.
    """

    def __init__(
        self,
        teacher: torch.nn.Module,
        samples: list[Sample],
        vocab_size: int,
        cache_bytes: int = DEFAULT_CACHE_BYTES,
        progress: bool = False,
    ):
        self.samples = samples
        self.cached = fits_cache(samples, vocab_size, cache_bytes)
        self._teacher = teacher.eval()
        self._cache: list[torch.Tensor] = []
        if self.cached:
            self._fill(progress)
            self._teacher = None  # drop it: the cache holds all it would compute
        else:
            for p in self._teacher.parameters():
                p.requires_grad_(False)

    @property
    def module(self) -> torch.nn.Module | None:
        """The kept teacher model (``None`` when cached)."""
        return self._teacher

    @torch.no_grad()
    def _fill(self, progress: bool) -> None:
        device = next(self._teacher.parameters()).device
        iterator = range(len(self.samples))
        if progress:
            from tqdm import tqdm

            iterator = tqdm(iterator, desc="FP teacher", unit="sample")
        for i in iterator:
            batch = collate(self.samples, [i], device)
            self._cache.append(self._compute(batch).to(torch.float16).cpu())

    def _compute(self, batch: Batch) -> torch.Tensor:
        logits = scored_logits(self._teacher, batch, use_cache=False)  # [M, V]: the scored positions only
        return F.log_softmax(logits.float(), dim=-1)

    @torch.no_grad()
    def logprobs(self, batch: Batch) -> torch.Tensor:
        """Teacher log-probs ``[M, V]`` at the batch's scored positions (row-major, like ``logits[mask]``)."""
        if self.cached:
            device = batch.input_ids.device
            return torch.cat([self._cache[i] for i in batch.indices]).to(device=device, dtype=torch.float32)
        return self._compute(batch)
