"""ExecuTorchDecoder: portable attention (standard ops) gives the llm-ops decoder's logits.

Both modes run the same float32 math (rotary, then causal grouped-query attention over the cache) in
another order: llama::custom_sdpa's blocked loops vs one bmm/softmax/bmm. With head_dim 16 and at most
32 keys the summation-order differences are ~1e-6 of logits of magnitude ~3 (measured: <= 1.4e-6), so
1e-5 is a tight bound that still fails on any wrong mask row, head grouping or cache row (each moves
the logits by > 1e-2).
"""

import numpy as np
import pytest
import torch

from otaro_export.export.executorch_decoder import ATTENTION_MODES, ExecuTorchDecoder, check_attention
from otaro_export.testing import TINY_EXECUTORCH_MAX_SEQ_LEN, tiny_causal_lm

TOL = dict(rtol=1e-5, atol=1e-5)
PROMPT = torch.tensor([[7, 200, 31, 4, 99, 150]])


def _pair(**overrides):
    model = tiny_causal_lm("llama", **overrides).model
    return (
        ExecuTorchDecoder(model, TINY_EXECUTORCH_MAX_SEQ_LEN, attention="llm-ops"),
        ExecuTorchDecoder(model, TINY_EXECUTORCH_MAX_SEQ_LEN, attention="portable"),
    )


def _run(decoder, steps):
    """Logits of each ``(ids [1, S], start, positions)`` step, in order, on one cache."""
    decoder.reset_cache()
    with torch.no_grad():
        return [decoder(*decoder.step_inputs(ids, start, positions)).numpy() for ids, start, positions in steps]


# a prompt, one-token steps, a 3-token chunk in the middle and a last-row-only chunk: S > 1 at start > 0
STEPS = [
    (PROMPT, 0, None),
    (torch.tensor([[5]]), 6, None),
    (torch.tensor([[17, 3, 250]]), 7, None),
    (torch.tensor([[9]]), 10, None),
    (torch.tensor([[40, 41]]), 11, [1]),
]


@pytest.mark.parametrize("kv_heads", [1, 2, 4])  # multi-query, grouped (2 q heads per kv head), multi-head
def test_portable_attention_gives_the_llm_ops_logits(kv_heads):
    llm_ops, portable = _pair(num_key_value_heads=kv_heads)
    want, got = _run(llm_ops, STEPS), _run(portable, STEPS)
    for (ids, start, _), w, g in zip(STEPS, want, got):
        np.testing.assert_allclose(g, w, **TOL, err_msg=f"step at {start} of {ids.shape[1]} tokens")
    # the check can fail: a step that ignored the cache (or the mask) would differ by far more than TOL
    assert np.abs(want[1] - _run(llm_ops, [(torch.tensor([[5]]), 0, None)])[0]).max() > 1e-2


def test_stale_rows_past_the_position_are_never_read():
    """After a long sequence, a shorter one from position 0 gives what a fresh cache gives (no clearing)."""
    _, portable = _pair()
    fresh = _run(portable, STEPS[:2])
    portable.reset_cache()
    with torch.no_grad():
        portable(*portable.step_inputs(torch.arange(20, 40).unsqueeze(0), 0))  # rows 0..19 hold other tokens
        again = [portable(*portable.step_inputs(ids, start)).numpy() for ids, start, _ in STEPS[:2]]
    for f, a in zip(fresh, again):
        np.testing.assert_allclose(a, f, **TOL)


def test_portable_buffers_are_head_major_and_the_program_has_no_custom_ops():
    _, portable = _pair()
    assert portable.get_buffer("k_cache_0").shape == (2, 16, TINY_EXECUTORCH_MAX_SEQ_LEN)  # keys transposed
    assert portable.get_buffer("v_cache_0").shape == (2, TINY_EXECUTORCH_MAX_SEQ_LEN, 16)
    ep = portable.export()
    targets = {str(n.target) for n in ep.graph.nodes if n.op == "call_function"}
    assert not [t for t in targets if "llama" in t or "otaro" in t], targets
    assert "aten.index_put_.default" in targets
    # tracing wrote into the real buffers; export() leaves them zero again
    assert not any(buf.any() for name, buf in portable.named_buffers() if "_cache_" in name)


def test_a_bad_attention_mode_names_the_choices():
    assert check_attention("portable") == "portable" and ATTENTION_MODES == ("llm-ops", "portable")
    with pytest.raises(ValueError, match=r"unknown ExecuTorch attention 'sdpa'; choose llm-ops .* or portable"):
        ExecuTorchDecoder(tiny_causal_lm().model, 8, attention="sdpa")
