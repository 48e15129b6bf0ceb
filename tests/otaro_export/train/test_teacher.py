import torch

from otaro_export.testing import TINY_VOCAB
from otaro_export.train.teacher import FPTeacher, fits_cache
from otaro_export.train.tune_data import collate


def test_cached_and_recomputed_teacher_agree(tiny, chat_samples):
    cached = FPTeacher(tiny.model, chat_samples, TINY_VOCAB)
    live = FPTeacher(tiny.model, chat_samples, TINY_VOCAB, cache_bytes=0)
    assert cached.cached and not live.cached
    batch = collate(chat_samples, [3, 0, 5])
    a, b = cached.logprobs(batch), live.logprobs(batch)
    assert a.shape == (int(batch.loss_mask.sum()), TINY_VOCAB)
    # The cache stores float16 log-probs: |log p| < ~20 here, fp16 spacing there is <= 2**-6.
    assert torch.allclose(a, b, atol=2**-5, rtol=0)
    assert not any(p.requires_grad for p in tiny.model.parameters())  # frozen


def test_a_cached_teacher_only_reads_the_model(tiny, chat_samples):
    """The trainer hands it the model it is about to tune: no copy, and nothing about the model changes."""
    scored = sum(len(s.ids) - s.target_start for s in chat_samples)
    assert fits_cache(chat_samples, TINY_VOCAB, cache_bytes=scored * TINY_VOCAB * 2)
    assert not fits_cache(chat_samples, TINY_VOCAB, cache_bytes=scored * TINY_VOCAB * 2 - 1)
    teacher = FPTeacher(tiny.model, chat_samples, TINY_VOCAB)
    assert teacher.cached and teacher.module is None
    assert all(p.requires_grad for p in tiny.model.parameters())
