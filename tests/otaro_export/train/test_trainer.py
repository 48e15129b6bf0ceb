import copy
import json

import pytest
import torch

from otaro_export.models import LoadedModel
from otaro_export.testing import tiny_causal_lm
from otaro_export.train.checkpoint import load_tuned_weights
from otaro_export.train.evaluation import evaluate_precisions
from otaro_export.train.fake_quant import attach_fake_quant, detach_fake_quant
from otaro_export.train.trainer import METRICS_FILE, SAMPLES_FILE, SUMMARY_FILE, TuneError, Tuner
from otaro_export.train.tune_config import TuneConfig
from otaro_export.train.tune_data import Sample, batch_indices, collate, read_saved_samples, save_samples


def _tune(tiny, samples, **overrides):
    cfg = TuneConfig(**{"steps": 12, "batch_size": 3, "laa_interval": 2, "optimizer": "adamw", **overrides})
    loaded = LoadedModel(copy.deepcopy(tiny.model), tiny.tokenizer, "tiny")
    return Tuner(cfg, loaded, samples=samples, progress=False).run()


def _metrics(model, teacher, samples):
    return {m.precision: m for m in evaluate_precisions(model, teacher, samples)}


def test_a_few_steps_lower_the_loss_at_every_precision(tiny, chat_samples):
    base = copy.deepcopy(tiny.model)
    attach_fake_quant(base)
    before = _metrics(base, tiny.model, chat_samples)
    result = _tune(tiny, chat_samples, method="otaro", loss="ce", lr=1e-3)
    after = _metrics(result.model, tiny.model, chat_samples)
    assert set(result.path) == {3, 4, 5, 6, 7, 8}
    for precision in ("E5M3", "E5M4", "E5M5", "E5M6", "E5M7", "E5M8", "FP"):
        # A random tiny model memorises 6 short answers fast: every precision's NLL falls clearly.
        assert after[precision].ppl < 0.9 * before[precision].ppl, precision


def test_kl_self_distillation_narrows_the_low_precision_gap(tiny, chat_samples):
    base = copy.deepcopy(tiny.model)
    attach_fake_quant(base)
    before = _metrics(base, tiny.model, chat_samples)
    after = _metrics(_tune(tiny, chat_samples, method="otaro", lr=3e-4).model, tiny.model, chat_samples)
    for precision in ("E5M3", "E5M4"):
        assert after[precision].kl < 0.7 * before[precision].kl, precision


def _weights(model):
    return {n: p.detach().clone() for n, p in model.named_parameters()}


def test_kill_and_resume_gives_bitwise_the_same_weights(tmp_path):
    def fresh_tuner():
        tiny = tiny_causal_lm(seed=0)
        # Self-distillation data (generated once, saved, reused on resume), AdamW state,
        # LAA buffers mid-accumulation and BPS state must all survive the restart.
        cfg = TuneConfig(
            method="otaro",
            steps=7,
            batch_size=2,
            num_samples=4,
            gen_tokens=8,
            optimizer="adamw",
            lr=1e-3,
            laa_interval=2,
            checkpoint_every=3,
            seed=5,
            lr_schedule="cosine",
            warmup_steps=2,
        )
        return Tuner(cfg, tiny, progress=False)

    straight = fresh_tuner().run(tmp_path / "a")

    class Killed(Exception):
        pass

    def kill_at_5(step):
        if step == 5:
            raise Killed

    with pytest.raises(Killed):
        fresh_tuner().run(tmp_path / "b", on_step=kill_at_5)
    assert (tmp_path / "b" / "LATEST").read_text().strip() == "ckpt-000003"  # steps 4-5 were lost
    resumed = fresh_tuner().run(tmp_path / "b", resume=True)

    assert resumed.path == straight.path and len(resumed.history) == 7
    assert [h["loss"] for h in resumed.history] == [h["loss"] for h in straight.history]
    rates = [h["lr"] for h in resumed.history]  # the schedule is a function of the step: resume keeps it
    assert rates == [h["lr"] for h in straight.history]
    assert rates[:3] == pytest.approx([5e-4, 1e-3, 1e-3]) and rates[-1] == pytest.approx(0.0, abs=1e-12)
    a, b = _weights(straight.model), _weights(resumed.model)
    assert all(torch.equal(a[n], b[n]) for n in a)
    assert json.loads((tmp_path / "b" / SAMPLES_FILE).read_text()) == json.loads(
        (tmp_path / "a" / SAMPLES_FILE).read_text()
    )


def test_output_is_loadable_into_a_plain_hf_model(tiny, chat_samples, tmp_path):
    cfg = TuneConfig(method="qat", qat_bits=8, steps=3, batch_size=2, optimizer="adamw", lr=1e-3)
    loaded = LoadedModel(copy.deepcopy(tiny.model), tiny.tokenizer, "tiny")
    result = Tuner(cfg, loaded, samples=chat_samples, progress=False).run(tmp_path)
    assert result.path == [8, 8, 8]
    summary = json.loads((tmp_path / SUMMARY_FILE).read_text())
    assert summary["visits"] == {"E5M8": 3}
    plain = tiny_causal_lm(seed=0).model
    load_tuned_weights(plain, tmp_path)
    detach_fake_quant(result.model)
    ids = torch.tensor([[3, 9, 27, 81]])
    assert torch.equal(plain(ids).logits, result.model(ids).logits)
    assert not torch.equal(plain(ids).logits, tiny.model(ids).logits)


def test_ptq_writes_the_untouched_weights(tiny, chat_samples, tmp_path):
    cfg = TuneConfig(method="ptq", steps=50)
    Tuner(
        cfg, LoadedModel(copy.deepcopy(tiny.model), tiny.tokenizer, "tiny"), samples=chat_samples, progress=False
    ).run(tmp_path)
    plain = tiny_causal_lm(seed=3).model
    load_tuned_weights(plain, tmp_path)
    q = "model.layers.1.mlp.down_proj.weight"
    assert torch.equal(plain.get_parameter(q), tiny.model.get_parameter(q))


def test_output_directory_guards(tiny, chat_samples, tmp_path):
    cfg = TuneConfig(method="uniform", steps=1, batch_size=2)
    Tuner(cfg, LoadedModel(copy.deepcopy(tiny.model), tiny.tokenizer, "t"), samples=chat_samples, progress=False).run(
        tmp_path / "r"
    )
    with pytest.raises(TuneError, match="--resume"):
        Tuner(
            cfg, LoadedModel(copy.deepcopy(tiny.model), tiny.tokenizer, "t"), samples=chat_samples, progress=False
        ).run(tmp_path / "r")
    with pytest.raises(TuneError, match="nothing to resume"):
        Tuner(
            cfg, LoadedModel(copy.deepcopy(tiny.model), tiny.tokenizer, "t"), samples=chat_samples, progress=False
        ).run(tmp_path / "empty", resume=True)


@pytest.mark.slow
def test_real_model_tunes_checkpoints_and_loads_for_export(tmp_path):
    """SmolLM2-135M: two BPS steps on a user JSONL file, then the export loader reads the result."""
    from otaro_export.models import load_model

    data = tmp_path / "chat.jsonl"
    data.write_text(
        json.dumps({"prompt": "What is the capital of France?", "response": "The capital of France is Paris."})
        + "\n"
        + json.dumps({"text": "Water boils at 100 degrees Celsius at sea level."})
        + "\n"
    )
    cfg = TuneConfig(method="bps", steps=2, batch_size=1, seq_len=48, data=str(data), optimizer="adamw", lr=1e-4)
    result = Tuner(cfg, load_model("default"), progress=False).run(tmp_path / "run")
    assert result.path == [3, 4] and all(h["loss"] > 0 for h in result.history)
    plain = load_model("default").model
    q0 = "model.layers.0.self_attn.q_proj.weight"
    untuned_q0 = plain.get_parameter(q0).detach().clone()
    names = load_tuned_weights(plain, tmp_path / "run")
    assert len(names) == 30 * 7  # every decoder-block linear of the 30 layers
    tuned = dict(result.model.named_parameters())
    assert all(torch.equal(plain.get_parameter(n), tuned[n]) for n in names)
    assert not torch.equal(plain.get_parameter(q0), untuned_q0)  # the tuned weights really moved


def test_anchor_adds_the_anchor_precision_gradient_on_the_same_batch(tiny, chat_samples):
    from otaro_export.train.fake_quant import set_precision
    from otaro_export.train.losses import next_token_nll

    cfg = dict(method="qat", qat_bits=3, steps=1, batch_size=3, optimizer="sgd", lr=0.1, loss="ce", seed=4)
    result = _tune(tiny, chat_samples, anchor_bits=8, **cfg)
    assert result.history[0]["bits"] == 3 and result.history[0]["anchor_loss"] > 0

    # By hand: one SGD step on grad(loss at E5M3) + grad(loss at E5M8) of the same batch.
    model = copy.deepcopy(tiny.model)
    attach_fake_quant(model)
    batch = collate(chat_samples, batch_indices(len(chat_samples), 3, 0, 4), "cpu")
    total = 0
    for bits in (3, 8):
        set_precision(model, bits)
        logits = model(input_ids=batch.input_ids, attention_mask=batch.attention_mask).logits
        total = total + next_token_nll(logits, batch.input_ids, batch.loss_mask)
    total.backward()
    tuned = dict(result.model.named_parameters())
    layer = "model.layers.0.mlp.down_proj.weight"
    param = dict(model.named_parameters())[layer]
    torch.testing.assert_close(tuned[layer], param.detach() - 0.1 * param.grad, rtol=0, atol=1e-6)

    plain = _tune(tiny, chat_samples, **cfg)
    assert "anchor_loss" not in plain.history[0]
    assert not torch.equal(dict(plain.model.named_parameters())[layer], tuned[layer])


def _data(path, n=6):
    rows = [{"prompt": f"Question {i}?", "response": f"Answer number {i}."} for i in range(n)]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def _quiet_tuner(cfg, lines):
    return Tuner(cfg, tiny_causal_lm(seed=0), progress=False, log=lines.append)


def test_sample_cache_is_rebuilt_when_a_setting_that_shapes_it_changes(tmp_path):
    data = _data(tmp_path / "d.jsonl")
    out = tmp_path / "run"
    out.mkdir()
    cfg = TuneConfig(method="qat", steps=1, batch_size=2, seq_len=64, data=str(data), optimizer="adamw", lr=1e-3)
    # A first attempt that died before its first checkpoint left samples built for --seq-len 40.
    save_samples([Sample((1, 2, 3), 1)], out / SAMPLES_FILE, {"seq_len": 40})
    lines = []
    _quiet_tuner(cfg, lines).run(out)
    assert any("built with other settings" in line and "seq_len" in line for line in lines), lines
    samples, key = read_saved_samples(out / SAMPLES_FILE)
    assert len(samples) == 6 and key["seq_len"] == 64 and key["data"]["path"] == str(data.resolve())

    # On resume the run keeps its own samples, even if the data file changed since.
    _data(data, n=3)
    lines = []
    _quiet_tuner(TuneConfig.from_dict({**cfg.to_dict(), "steps": 2}), lines).run(out, resume=True)
    assert any("changed since the run started" in line for line in lines), lines
    assert read_saved_samples(out / SAMPLES_FILE)[0] == samples


def test_prompts_longer_than_seq_len_give_an_error_that_says_so(tmp_path):
    cfg = TuneConfig(method="qat", steps=1, batch_size=2, seq_len=8, num_samples=2, gen_tokens=4)
    with pytest.raises(TuneError, match=r"--seq-len 8 \(raise --seq-len above \d+\)"):
        _quiet_tuner(cfg, []).run(tmp_path / "run")
    assert not (tmp_path / "run" / SAMPLES_FILE).exists()  # nothing broken is cached for the next attempt


def test_leftover_temporary_checkpoints_are_removed_at_the_next_start(tiny, chat_samples, tmp_path):
    cfg = TuneConfig(method="uniform", steps=1, batch_size=2)
    Tuner(cfg, LoadedModel(copy.deepcopy(tiny.model), tiny.tokenizer, "t"), samples=chat_samples, progress=False).run(
        tmp_path
    )
    (tmp_path / ".tmp-ckpt-000002-4242").mkdir()  # a save killed by SIGKILL
    lines = []
    resumed = TuneConfig.from_dict({**cfg.to_dict(), "steps": 2})
    Tuner(
        resumed,
        LoadedModel(copy.deepcopy(tiny.model), tiny.tokenizer, "t"),
        samples=chat_samples,
        progress=False,
        log=lines.append,
    ).run(tmp_path, resume=True)
    assert not list(tmp_path.glob(".tmp-ckpt-*"))
    assert any(".tmp-ckpt-000002-4242" in line for line in lines)


def test_metrics_hold_tokens_per_second_for_every_step(tiny, chat_samples, tmp_path):
    cfg = TuneConfig(method="bps", steps=3, batch_size=2, checkpoint_every=2)
    Tuner(cfg, LoadedModel(copy.deepcopy(tiny.model), tiny.tokenizer, "t"), samples=chat_samples, progress=False).run(
        tmp_path
    )
    rows = [json.loads(line) for line in (tmp_path / METRICS_FILE).read_text().splitlines()]
    assert [r["step"] for r in rows] == [0, 1, 2] and [r["bits"] for r in rows] == [3, 4, 5]
    for r in rows:
        batch = collate(chat_samples, batch_indices(len(chat_samples), 2, r["step"], cfg.seed))
        assert r["tokens"] == int(batch.attention_mask.sum()) and r["tok_s"] > 0
    assert json.loads((tmp_path / SUMMARY_FILE).read_text())["tokens_per_second"] > 0


def test_activation_checkpointing_recomputes_exactly(tiny, chat_samples):
    """Eval mode, no random numbers: recomputing each block in backward gives the same weights, bit for bit."""
    cfg = dict(method="otaro", steps=4, laa_interval=2, optimizer="sgd", lr=0.05, momentum=0.9)
    plain = _weights(_tune(tiny, chat_samples, **cfg).model)
    checkpointed = _tune(tiny, chat_samples, activation_checkpointing=True, **cfg).model
    assert any("checkpoint" in repr(hook) for hook in checkpointed.model.layers[0]._forward_pre_hooks.values())
    again = _weights(checkpointed)
    assert all(torch.equal(plain[n], again[n]) for n in plain)


def test_layer_floors_are_planned_once_on_the_untuned_model_recorded_and_kept_on_resume(
    tiny, chat_samples, tmp_path, monkeypatch
):
    from otaro_export.export import sefp_recipe
    from otaro_export.reconstruction import export_units
    from otaro_export.train import checkpoint as ckpt
    from otaro_export.train.fake_quant import fake_quant_layers

    plans = []
    real = sefp_recipe.plan_layer_floors

    def counting(model, *args, **kwargs):
        plans.append(1)
        return real(model, *args, **kwargs)

    monkeypatch.setattr(sefp_recipe, "plan_layer_floors", counting)
    # a table rule without the exponent search: the encodings stay cheap
    rules = dict(reconstruction="center", exponent_rule="floor", int8_activations=4)
    # the floors an export of the untuned model picks (tied SEFP lm_head included)
    expected = real(
        copy.deepcopy(tiny.model), tiny.tokenizer, export_units(tiny.model), sefp_recipe.SEFPRecipe(**rules)
    ).floors
    assert expected  # the tiny model has sensitive layers within the default budget
    cfg = TuneConfig(
        method="bps", optimizer="adamw", lr=1e-3, steps=4, batch_size=2, checkpoint_every=2, quantize_lm_head=True
    )
    cfg = TuneConfig.from_dict({**cfg.to_dict(), **rules, "layer_floors": "auto"})

    def tuner():
        loaded = LoadedModel(copy.deepcopy(tiny.model), tiny.tokenizer, "tiny")
        return Tuner(cfg, loaded, samples=chat_samples, progress=False, log=lambda _m: None)

    def floors_of(model):
        units = {u.name: u.members for u in export_units(model)}
        layers = fake_quant_layers(model)
        got = {name: {layers[m].min_bits for m in members} for name, members in units.items()}
        assert all(len(bits) == 1 for bits in got.values())  # a packed layer's members share its floor
        return {name: bits.pop() for name, bits in got.items() if bits != {None}}

    class Killed(Exception):
        pass

    def kill_at_3(step):
        if step == 3:
            raise Killed

    run = tmp_path / "run"
    first = tuner()
    with pytest.raises(Killed):
        first.run(run, on_step=kill_at_3)
    assert len(plans) == 1 and first.floor_plan.floors == expected
    assert floors_of(first.module) == expected  # training ran with the floors
    assert {m.act_int8_max_bits for m in fake_quant_layers(first.module).values()} == {4}  # and int8 activations
    meta_path = ckpt.resolve_checkpoint(run) / ckpt.META_FILE
    meta = json.loads(meta_path.read_text())
    assert meta["floor_plan"]["floors"] == expected and meta["config"]["layer_floors"] == "auto"

    # Resume reads the recorded plan (here: altered, to tell it from a new plan) and makes none.
    recorded = {"model.layers.1.mlp.down_proj": 6}
    meta["floor_plan"]["floors"] = recorded
    meta_path.write_text(json.dumps(meta))
    resumed = tuner()
    result = resumed.run(run, resume=True)
    assert len(plans) == 1 and len(result.history) == 4
    assert floors_of(result.model) == recorded
    meta_path = ckpt.resolve_checkpoint(run) / ckpt.META_FILE
    meta = json.loads(meta_path.read_text())
    assert meta["floor_plan"]["floors"] == recorded  # the later checkpoints record the same plan
    del meta["floor_plan"]
    meta_path.write_text(json.dumps(meta))
    with pytest.raises(TuneError, match="records no floor plan"):
        tuner().run(run, resume=True)


def test_adamw_on_the_cpu_is_the_fused_kernel_and_updates_as_the_default_one():
    from otaro_export.train.trainer import build_optimizer

    torch.manual_seed(0)
    start = [torch.randn(64, 96) * 0.02, torch.randn(7)]
    grads = [[torch.randn_like(t) * 1e-3 for t in start] for _ in range(10)]

    def run(make):
        params = [torch.nn.Parameter(t.clone()) for t in start]
        optimizer = make(params)
        for step in grads:
            for p, g in zip(params, step):
                p.grad = g.clone()
            optimizer.step()
        return params, optimizer

    cfg = TuneConfig(optimizer="adamw", lr=1e-3, weight_decay=0.01)
    fused, optimizer = run(lambda ps: build_optimizer(cfg, ps))
    assert optimizer.param_groups[0]["fused"]
    default, _ = run(lambda ps: torch.optim.AdamW(ps, lr=1e-3, weight_decay=0.01, foreach=False))
    for a, b in zip(fused, default):
        torch.testing.assert_close(a, b, rtol=1e-6, atol=1e-9)  # the same update, up to float rounding
        assert not torch.equal(a, start[0] if a.dim() == 2 else start[1])
