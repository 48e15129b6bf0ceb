import torch

from otaro_export.passes import program_utils as pu


def _specs_match_placeholders(ep):
    names = [n.name for n in pu.placeholders(ep)]
    return names == [s.arg.name for s in ep.graph_signature.input_specs]


def test_add_then_remove_constant_keeps_program_consistent(tiny, float_ep, ids):
    model, _, _ = tiny
    ep = float_ep
    expected = ep.module()(ids, torch.tensor(8))
    node = pu.add_constant(ep, "extra.table", torch.arange(4))
    assert _specs_match_placeholders(ep)
    spec = pu.input_spec(ep, node)
    assert spec.kind.name == "CONSTANT_TENSOR" and torch.equal(ep.constants[spec.target], torch.arange(4))
    # a second constant of the same name gets a fresh target instead of overwriting
    other = pu.add_constant(ep, "extra.table", torch.zeros(2))
    assert pu.input_spec(ep, other).target != spec.target
    pu.finish(ep)
    assert torch.equal(ep.module()(ids, torch.tensor(8)), expected)
    for n in (node, other):
        pu.remove_placeholder(ep, n)
    pu.finish(ep)
    assert _specs_match_placeholders(ep) and "extra.table" not in ep.constants


def test_remove_refuses_used_input_and_user_inputs(tiny, float_ep):
    model, _, _ = tiny
    ep = float_ep
    target = next(t for t in pu.lifted_inputs(ep) if t.endswith("q_proj.weight"))
    used, _ = pu.lifted_inputs(ep)[target]
    try:
        pu.remove_placeholder(ep, used)
    except RuntimeError as exc:
        assert "still used" in str(exc)
    else:
        raise AssertionError("removing a used input must fail")
    user = pu.user_input_nodes(ep)[0]
    user_users = dict(user.users)
    for u in list(user_users):
        u.replace_input_with(user, used)  # make it unused without changing the signature
    try:
        pu.remove_placeholder(ep, user)
    except RuntimeError as exc:
        assert "not a parameter" in str(exc)
    else:
        raise AssertionError("removing a user input must fail")
