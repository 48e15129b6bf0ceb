"""The onnxruntime custom-op library (runtime_ops/ort_library.py, csrc/onnxruntime/).

One-layer ONNX models built with onnx.helper hold a single ``ai.otaro::SEFPLinear``
or ``ai.otaro::SEFPEmbedding`` node (no function body, so only the library's
kernels can run them) and are compared with the torch reference ops, for every
reconstruction rule (sefp_kernel_cases.level_tables) at every precision.
"""

from __future__ import annotations

import ctypes

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from onnx import TensorProto, helper, numpy_helper
from sefp_kernel_cases import RULES, embedding_reference, level_tables

from otaro_export import ops, packing, sefp
from otaro_export.errors import KernelLibraryError
from otaro_export.runtime_ops import ort_library

ORT_FAIL = 1  # OrtErrorCode


def make_layer(n: int, k: int, bias: bool, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    w = torch.randn(n, k, generator=g)
    b = torch.randn(n, generator=g) if bias else None
    return packing.pack(sefp.quantize(w)), b


def make_model(
    packed,
    bias,
    *,
    overrides=None,
    bits_shape=(),
    empty_bias_name=False,
    levels=None,
    act_int8_max_bits=None,
    swiglu=None,
) -> bytes:
    """SEFPLinear with the planes (bias, levels) as initializers; X (any rank) and bits are graph inputs.

    Without a bias the node has 7 inputs, or 8 with "" as the omitted B if ``empty_bias_name``
    (or when ``levels`` is given: L is the 9th input).
    """
    arrays = {"P0": packed.p0, "P1": packed.p1, "P2": packed.p2, "P3": packed.p3, "E": packed.exponents}
    if bias is not None:
        arrays["B"] = bias
    if levels is not None:
        arrays["L"] = levels
    arrays = {name: t.numpy() for name, t in arrays.items()}
    arrays.update(overrides or {})
    inputs = ["X", "P0", "P1", "P2", "P3", "E", "bits"]
    inputs += ["B"] if "B" in arrays else ([""] if empty_bias_name or "L" in arrays else [])
    inputs += ["L"] if "L" in arrays else []
    attrs = {} if act_int8_max_bits is None else {"act_int8_max_bits": act_int8_max_bits}
    if swiglu is not None:
        attrs["swiglu"] = swiglu
    node = helper.make_node(ort_library.OP_TYPE, inputs, ["Y"], domain=ort_library.DOMAIN, **attrs)
    graph = helper.make_graph(
        [node],
        "one_sefp_linear",
        [
            helper.make_tensor_value_info("X", TensorProto.FLOAT, None),  # rank left open on purpose
            helper.make_tensor_value_info("bits", TensorProto.INT64, list(bits_shape)),
        ],
        [helper.make_tensor_value_info("Y", TensorProto.FLOAT, None)],
        initializer=[numpy_helper.from_array(a, name) for name, a in arrays.items()],
    )
    opsets = [helper.make_opsetid("", 17), helper.make_opsetid(ort_library.DOMAIN, 1)]
    return helper.make_model(graph, opset_imports=opsets).SerializeToString()


def session(model: bytes, num_threads: int = 1) -> ort.InferenceSession:
    return ort.InferenceSession(model, ort_library.session_options(num_threads), providers=["CPUExecutionProvider"])


def run(sess, x: np.ndarray, bits: int) -> np.ndarray:
    return sess.run(None, {"X": x, "bits": np.array(bits, dtype=np.int64)})[0]


def assert_matches_reference(y: np.ndarray, x: np.ndarray, packed, bias, bits: int, levels=None) -> None:
    xt = torch.from_numpy(x)
    expected = ops.sefp_linear(xt, *packed.planes(), packed.exponents, ops.bits_tensor(bits), bias, levels)
    assert y.shape == tuple(expected.shape)
    # Tolerance: both sides use the exact SEFP weights (W_k is exact in float32), so they
    # differ only in float32 summation order. A K-term dot product carries at most
    # ~K*u*sum|x_i*w_i| rounding error (u = 2^-24) whatever the order; bound the difference
    # of the two results by twice that, plus the bias add, elementwise.
    w = packed.unpack().dequantize(bits, levels)
    magnitude = xt.abs() @ w.abs().T + (bias.abs() if bias is not None else 0)
    k = x.shape[-1]
    bound = (k + 1) * 2.0**-23 * magnitude
    err = (torch.from_numpy(y) - expected).abs()
    assert bool((err <= bound).all()), f"max err {err.max():.3g} exceeds the summation bound (bits={bits})"


@pytest.mark.parametrize("with_bias", [True, False])
def test_every_precision_from_one_model_and_one_session(with_bias):
    packed, bias = make_layer(n=40, k=100, bias=with_bias)  # K=100: not a multiple of 64
    sess = session(make_model(packed, bias))
    g = torch.Generator().manual_seed(1)
    shapes = [(100,), (1, 100), (4, 100), (2, 3, 100)]  # rank 1..3, batch 1 and > 1
    for bits in sefp.SUPPORTED_BITS:
        for shape in shapes:
            x = torch.randn(*shape, generator=g).numpy()
            assert_matches_reference(run(sess, x, bits), x, packed, bias, bits)


@pytest.mark.parametrize("rule", RULES)
@pytest.mark.parametrize("with_bias", [True, False])
def test_every_rule_at_every_precision(rule, with_bias):
    """Levels L as the 9th input (B omitted as "" when there is no bias)."""
    levels = level_tables(seed=3)[rule]
    packed, bias = make_layer(n=70, k=130, bias=with_bias, seed=6)
    sess = session(make_model(packed, bias, levels=levels), num_threads=2)
    g = torch.Generator().manual_seed(8)
    for bits in sefp.SUPPORTED_BITS:
        for shape in [(1, 130), (5, 130)]:  # decode matvec and GEMM path
            x = torch.randn(*shape, generator=g).numpy()
            assert_matches_reference(run(sess, x, bits), x, packed, bias, bits, levels)


def test_bad_levels_are_clean_errors():
    packed, bias = make_layer(n=40, k=100, bias=True)
    bad = sefp.center_levels()
    bad[1, 2] = float("inf")  # E5M4 row
    sess = session(make_model(packed, bias, levels=bad))
    x = np.ones((1, 100), np.float32)
    with pytest.raises(Exception, match="reconstruction levels must be finite"):
        run(sess, x, 4)
    assert_matches_reference(run(sess, x, 5), x, packed, bias, 5, sefp.center_levels())  # E5M5 never reads row 1
    wrong_shape = session(make_model(packed, bias, levels=torch.zeros(6, 16)))
    with pytest.raises(Exception, match=r"L \(reconstruction levels\) must be float32 \[6, 256\]"):
        run(wrong_shape, x, 4)


@pytest.mark.parametrize("rule", ["floor", "fitted"])
def test_int8_activations_attribute(rule):
    """act_int8_max_bits = 4: fq(x) @ W_k^T at E5M3/E5M4 (docs/FORMAT.md §9), x @ W_k^T above; decode and prefill rows."""
    from otaro_export import activation_quant as aq

    levels = level_tables()[rule]
    if levels is not None:
        levels = aq.round_levels_to_int8_grid(levels, 4)  # as the exporter stores them: the integer kernel runs
    packed, bias = make_layer(96, 200, bias=True, seed=5)
    sess = session(make_model(packed, bias, levels=levels, act_int8_max_bits=4), num_threads=2)
    for rows in (1, 6):
        x = np.random.default_rng(rows).standard_normal((rows, 200)).astype(np.float32)
        for bits in sefp.SUPPORTED_BITS:
            xq = aq.fake_quantize(torch.from_numpy(x)).numpy() if bits <= 4 else x
            assert_matches_reference(run(sess, x, bits), xq, packed, bias, bits, levels)
    plain = session(make_model(packed, bias, levels=levels))
    assert not np.array_equal(run(plain, x, 3), run(sess, x, 3))
    assert np.array_equal(run(plain, x, 5), run(sess, x, 5))


def swiglu_reference(x: np.ndarray, packed, bias, bits: int):
    """(silu(gate) * up, the gate and up halves of Z = x @ W_k^T + b, Z's summation bound) from the torch op."""
    xt = torch.from_numpy(x)
    z = ops.sefp_linear(xt, *packed.planes(), packed.exponents, ops.bits_tensor(bits), bias)
    w = packed.unpack().dequantize(bits)
    bound = (x.shape[-1] + 1) * 2.0**-23 * (xt.abs() @ w.abs().T + (bias.abs() if bias is not None else 0))
    half = z.shape[-1] // 2
    gate, up = z[..., :half], z[..., half:]
    return torch.nn.functional.silu(gate) * up, (gate, up), (bound[..., :half], bound[..., half:])


@pytest.mark.parametrize("int8", [None, 4])
@pytest.mark.parametrize("n", [2 * 72, 2 * 1000])  # 72: the up half starts mid row-block; 2000 rows: several tasks
def test_swiglu_attribute_outputs_silu_gate_times_up(n, int8):
    """swiglu=1: Y = silu(Z[:, :N/2]) * Z[:, N/2:] for decode and prefill rows, on 1 and 2 threads."""
    from otaro_export import activation_quant as aq

    packed, bias = make_layer(n, 100, bias=True, seed=8)
    model = make_model(packed, bias, swiglu=1, act_int8_max_bits=int8)
    one, two = session(model, num_threads=1), session(model, num_threads=2)
    for rows in (1, 5):
        x = np.random.default_rng(rows).standard_normal((rows, 100)).astype(np.float32)
        for bits in (3, 4, 8):
            y = run(two, x, bits)
            xq = aq.fake_quantize(torch.from_numpy(x)).numpy() if int8 and bits <= int8 else x
            expected, (gate, up), (gate_bound, up_bound) = swiglu_reference(xq, packed, bias, bits)
            assert y.shape == (rows, n // 2)
            # Tolerance: Z's halves carry the summation bound of assert_matches_reference; silu has slope
            # in [-0.1, 1.1], so the product moves by at most 1.1 * gate_bound * |up| + |silu(gate)| *
            # up_bound; the kernel's e^x (a degree-7 polynomial, ~2e-7 relative) and the divide and
            # multiplies add a few float32 roundings of the result: 1e-6 relative.
            silu = torch.nn.functional.silu(gate)
            bound = 1.1 * gate_bound * up.abs() + silu.abs() * up_bound + 1e-6 * expected.abs()
            err = (torch.from_numpy(y) - expected).abs()
            assert bool((err <= bound).all()), f"max err {err.max():.3g} (rows={rows}, bits={bits})"
            np.testing.assert_array_equal(y, run(one, x, bits))  # same code for each feature, whatever the split


def test_swiglu_attribute_errors_are_clean():
    odd, _ = make_layer(9, 64, bias=False)
    x = {"X": np.zeros((1, 64), np.float32), "bits": np.array(4, np.int64)}
    with pytest.raises(Exception, match="swiglu=1 needs an even number of output features"):
        session(make_model(odd, None, swiglu=1)).run(None, x)
    even, _ = make_layer(8, 64, bias=False)
    with pytest.raises(Exception, match="attribute swiglu must be 0 or 1"):
        session(make_model(even, None, swiglu=2)).run(None, x)
    plain = run(session(make_model(even, None, swiglu=0)), x["X"], 4)
    np.testing.assert_array_equal(plain, run(session(make_model(even, None)), x["X"], 4))


@pytest.mark.parametrize("bad", [1, 9, -4])
def test_int8_activations_attribute_out_of_range_is_a_clean_error(bad):
    packed, bias = make_layer(8, 64, bias=False)
    with pytest.raises(Exception, match="act_int8_max_bits must be 0 \\(off\\) or 3..8"):
        session(make_model(packed, None, act_int8_max_bits=bad)).run(
            None, {"X": np.zeros((1, 64), np.float32), "bits": np.array(4, np.int64)}
        )


def test_omitted_bias_written_as_an_empty_input_name():
    packed, _ = make_layer(n=40, k=100, bias=False)
    sess = session(make_model(packed, None, empty_bias_name=True))
    x = torch.randn(3, 100, generator=torch.Generator().manual_seed(5)).numpy()
    assert_matches_reference(run(sess, x, 6), x, packed, None, 6)


def test_precision_changes_the_result():
    """bits really reaches the kernel: coarser precisions give different outputs."""
    packed, bias = make_layer(n=40, k=100, bias=True)
    sess = session(make_model(packed, bias))
    x = torch.randn(2, 100, generator=torch.Generator().manual_seed(2)).numpy()
    outputs = [run(sess, x, bits) for bits in sefp.SUPPORTED_BITS]
    assert all(not np.array_equal(a, b) for a, b in zip(outputs, outputs[1:]))


def test_registered_kernel_wins_over_a_model_local_function():
    """Exported models also carry a SEFPLinear function body (stock ORT's slow path);
    with the library registered, ORT must run the kernel instead."""
    import onnx

    packed, bias = make_layer(n=40, k=100, bias=True)
    model = onnx.load_from_string(make_model(packed, bias))
    # a deliberately different body (Y = X, shape [..., K]) so that the path taken shows
    body = [helper.make_node("Identity", ["X"], ["Y"])]
    inputs = ["X", "P0", "P1", "P2", "P3", "E", "bits", "B"]
    model.functions.append(
        helper.make_function(
            ort_library.DOMAIN, ort_library.OP_TYPE, inputs, ["Y"], body, [helper.make_opsetid("", 17)]
        )
    )
    data = model.SerializeToString()
    x = np.ones((1, 100), np.float32)
    stock = ort.InferenceSession(data, providers=["CPUExecutionProvider"])
    assert run(stock, x, 5).shape == (1, 100)  # the function body ran
    assert_matches_reference(run(session(data), x, 5), x, packed, bias, 5)


@pytest.mark.parametrize("rows", [1, 5])
def test_work_split_across_intra_op_threads(rows):
    """Large enough that the kernel splits output features into several ORT tasks."""
    packed, bias = make_layer(n=2000, k=300, bias=True, seed=3)  # 4 tasks of 31-32 row blocks (125 in all)
    model = make_model(packed, bias)
    one, two = session(model, num_threads=1), session(model, num_threads=2)
    x = torch.randn(rows, 300, generator=torch.Generator().manual_seed(4)).numpy()
    for bits in (3, 8):
        y = run(two, x, bits)
        assert_matches_reference(y, x, packed, bias, bits)
        # each output is computed by the same code whatever thread runs it
        np.testing.assert_array_equal(y, run(one, x, bits))


@pytest.mark.parametrize("bits", [2, 9, 0, -1])
def test_bits_out_of_range_is_a_clean_error(bits):
    packed, bias = make_layer(n=40, k=100, bias=True)
    sess = session(make_model(packed, bias))
    x = np.ones((1, 100), np.float32)
    with pytest.raises(Exception, match=rf"bits must be in 3\.\.8 \(E5M3\.\.E5M8\), got {bits}") as info:
        run(sess, x, bits)
    assert "InvalidArgument" in type(info.value).__name__
    assert_matches_reference(run(sess, x, 5), x, packed, bias, 5)  # the session is still usable


def test_bits_must_be_a_scalar():
    packed, bias = make_layer(n=40, k=100, bias=True)
    sess = session(make_model(packed, bias, bits_shape=(1,)))
    with pytest.raises(Exception, match="bits must be a 0-dim int64 tensor"):
        sess.run(None, {"X": np.ones((1, 100), np.float32), "bits": np.array([5], dtype=np.int64)})


def test_input_features_inconsistent_with_groups_is_a_clean_error():
    packed, bias = make_layer(n=40, k=100, bias=True)  # 2 groups: accepts K in 65..128
    sess = session(make_model(packed, bias))
    for k in (64, 129, 200):
        with pytest.raises(Exception, match=rf"X has {k} input features .*accepts 65\.\.128"):
            run(sess, np.ones((1, k), np.float32), 5)
    with pytest.raises(Exception, match="rank >= 1"):
        run(sess, np.array(1.0, np.float32), 5)


@pytest.mark.parametrize(
    "name, bad, message",
    [
        ("P0", lambda p: p.p0.numpy()[:, :-1], r"plane P0 must be uint8 \[40, 64\] for E of shape \[40, 2\]"),
        ("P3", lambda p: p.p3.numpy()[:-1], r"plane P3 must be uint8 \[40, 16\]"),
        ("E", lambda p: p.exponents.numpy()[:-1], r"plane P0 must be uint8 \[39, 64\]"),
        ("E", lambda p: p.exponents.numpy()[0], r"E \(exponents\) must be int8 \[N, G\]"),
        ("B", lambda p: np.zeros(39, np.float32), r"bias B must be float32 \[40\]"),
    ],
)
def test_inconsistent_weight_shapes_are_clean_errors(name, bad, message):
    packed, bias = make_layer(n=40, k=100, bias=True)
    sess = session(make_model(packed, bias, overrides={name: np.ascontiguousarray(bad(packed))}))
    with pytest.raises(Exception, match=message):
        run(sess, np.ones((1, 100), np.float32), 8)


# ---- SEFPEmbedding ----


def make_embedding_model(packed, *, levels=None, in_features=None, ids_shape=("B", "S")) -> bytes:
    """SEFPEmbedding with the planes (and levels) as initializers; ids and bits are graph inputs."""
    arrays = {"P0": packed.p0, "P1": packed.p1, "P2": packed.p2, "P3": packed.p3, "E": packed.exponents}
    if levels is not None:
        arrays["L"] = levels
    inputs = ["ids", "P0", "P1", "P2", "P3", "E", "bits", *(["L"] if levels is not None else [])]
    attrs = {} if in_features is False else {"in_features": packed.in_features if in_features is None else in_features}
    node = helper.make_node(ort_library.EMBEDDING_OP_TYPE, inputs, ["Y"], domain=ort_library.DOMAIN, **attrs)
    graph = helper.make_graph(
        [node],
        "one_sefp_embedding",
        [
            helper.make_tensor_value_info("ids", TensorProto.INT64, list(ids_shape)),
            helper.make_tensor_value_info("bits", TensorProto.INT64, []),
        ],
        [helper.make_tensor_value_info("Y", TensorProto.FLOAT, None)],
        initializer=[numpy_helper.from_array(t.numpy(), name) for name, t in arrays.items()],
    )
    opsets = [helper.make_opsetid("", 17), helper.make_opsetid(ort_library.DOMAIN, 1)]
    return helper.make_model(graph, opset_imports=opsets).SerializeToString()


def embed(sess, ids: np.ndarray, bits: int) -> np.ndarray:
    return sess.run(None, {"ids": ids, "bits": np.array(bits, dtype=np.int64)})[0]


@pytest.mark.parametrize("rule", RULES)
def test_embedding_rows_equal_reference_at_every_precision(rule):
    levels = level_tables(seed=4)[rule]
    packed, _ = make_layer(n=50, k=100, bias=False, seed=9)
    sess = session(make_embedding_model(packed, levels=levels))
    ids = np.array([[0, 49, 7], [3, 3, 20]])
    for bits in sefp.SUPPORTED_BITS:
        y = embed(sess, ids, bits)
        assert y.shape == (2, 3, 100)
        np.testing.assert_array_equal(y, embedding_reference(torch.from_numpy(ids), packed, bits, levels).numpy())


def test_embedding_and_linear_share_one_set_of_planes():
    """The tied embedding + lm_head: both nodes read the same initializers (stored once)."""
    packed, _ = make_layer(n=50, k=100, bias=False, seed=9)
    model = onnx.load_from_string(make_embedding_model(packed, ids_shape=(1, "S")))
    model.graph.node[0].output[0] = "H"
    model.graph.node.append(
        helper.make_node(
            ort_library.OP_TYPE, ["H", "P0", "P1", "P2", "P3", "E", "bits"], ["Y"], domain=ort_library.DOMAIN
        )
    )
    assert len(model.graph.initializer) == 5
    sess = session(model.SerializeToString())
    ids = np.array([[4, 11]])
    for bits in (3, 8):
        w = packed.unpack().dequantize(bits)
        want = w[torch.from_numpy(ids)] @ w.T
        np.testing.assert_allclose(embed(sess, ids, bits), want.numpy(), rtol=1e-5, atol=1e-4)


@pytest.mark.parametrize("bad", [-1, 50, 2**40])
def test_embedding_ids_out_of_range_are_clean_errors(bad):
    packed, _ = make_layer(n=50, k=100, bias=False)
    sess = session(make_embedding_model(packed))
    with pytest.raises(Exception, match=rf"ids\[1\] = {bad} is outside \[0, 50\)") as info:
        embed(sess, np.array([[2, bad]]), 5)
    assert "InvalidArgument" in type(info.value).__name__
    assert embed(sess, np.array([[2]]), 5).shape == (1, 1, 100)  # the session is still usable


def test_embedding_argument_errors():
    packed, _ = make_layer(n=50, k=100, bias=False)
    sess = session(make_embedding_model(packed))
    with pytest.raises(Exception, match=r"bits must be in 3\.\.8"):
        embed(sess, np.array([[2]]), 9)
    with pytest.raises(Exception, match=r"in_features is 200 but the table has 2 groups"):
        embed(session(make_embedding_model(packed, in_features=200)), np.array([[2]]), 5)
    with pytest.raises(Exception, match="attribute in_features"):
        session(make_embedding_model(packed, in_features=False))
    assert embed(sess, np.zeros((1, 0), np.int64), 5).shape == (1, 0, 100)


def test_registered_kernels_win_over_overloaded_functions():
    """Nodes with L carry the function overload "levels" (attach_function); the kernels still run them."""
    from otaro_export.export.onnx_sefp_function import attach_function

    packed, bias = make_layer(n=40, k=100, bias=True)
    levels = level_tables()["fitted"]
    model = onnx.load_from_string(make_model(packed, bias, levels=levels))
    del model.opset_import[:]
    model.opset_import.extend([helper.make_opsetid("", 18)])
    attach_function(model)
    assert model.graph.node[0].overload == "levels"
    # swap in a deliberately different body so that the path taken shows
    fn = next(f for f in model.functions if f.overload == "levels")
    del fn.node[:]
    fn.node.extend([helper.make_node("Identity", ["X"], ["Y"])])
    data = model.SerializeToString()
    x = np.ones((1, 100), np.float32)
    assert run(ort.InferenceSession(data, providers=["CPUExecutionProvider"]), x, 3).shape == (1, 100)
    assert_matches_reference(run(session(data), x, 3), x, packed, bias, 3, levels)


def test_wrong_dtypes_are_rejected_when_the_model_loads():
    packed, bias = make_layer(n=40, k=100, bias=True)
    model = make_model(packed, bias, overrides={"P0": packed.p0.numpy().view(np.int8)})
    with pytest.raises(Exception, match=r"Type 'tensor\(int8\)' of input parameter \(P0\)"):
        session(model)


# ---- the C ABI declared in csrc/onnxruntime/ort_abi.h, against the installed onnxruntime ----


def test_abi_declaration_matches_installed_onnxruntime():
    ort_library.abi_selfcheck()


class _OrtApiBase(ctypes.Structure):
    _fields_ = [
        ("GetApi", ctypes.CFUNCTYPE(ctypes.c_void_p, ctypes.c_uint32)),
        ("GetVersionString", ctypes.CFUNCTYPE(ctypes.c_void_p)),
    ]


def test_registration_on_a_too_old_runtime_returns_a_clear_error():
    """An onnxruntime without API 17 (GetApi -> nullptr) gets an error status, not a crash."""
    ort_c = ctypes.CDLL(str(ort_library.onnxruntime_c_library()))
    ort_c.OrtGetApiBase.restype = ctypes.POINTER(_OrtApiBase)
    real = ort_c.OrtGetApiBase().contents
    asked = []

    def get_api(version):
        asked.append(version)
        return real.GetApi(version) if version < ort_library.ORT_API_VERSION else None

    version_string = ctypes.create_string_buffer(b"1.16.3")
    old_runtime = _OrtApiBase(
        _OrtApiBase._fields_[0][1](get_api), _OrtApiBase._fields_[1][1](lambda: ctypes.addressof(version_string))
    )
    lib = ctypes.CDLL(str(ort_library.library_path()))
    lib.RegisterCustomOps.restype = ctypes.c_void_p
    lib.RegisterCustomOps.argtypes = [ctypes.c_void_p, ctypes.c_void_p]
    status = lib.RegisterCustomOps(None, ctypes.byref(old_runtime))  # must not touch the options
    assert status, "registration reported success on a runtime without API 17"

    api = ctypes.cast(real.GetApi(1), ctypes.POINTER(ctypes.c_void_p))  # version-1 table entries
    get_error_code = ctypes.CFUNCTYPE(ctypes.c_int, ctypes.c_void_p)(api[1])
    get_error_message = ctypes.CFUNCTYPE(ctypes.c_char_p, ctypes.c_void_p)(api[2])
    release_status = ctypes.CFUNCTYPE(None, ctypes.c_void_p)(api[93])
    code, message = get_error_code(status), get_error_message(status).decode()
    release_status(status)
    assert asked[0] == ort_library.ORT_API_VERSION
    assert code == ORT_FAIL
    assert "needs onnxruntime >= 1.17" in message and "1.16.3" in message and "pip install" in message


def test_library_registers_into_several_session_options():
    packed, bias = make_layer(n=40, k=100, bias=False)
    model = make_model(packed, bias)
    x = np.ones((1, 100), np.float32)
    first, second = session(model), session(model, num_threads=2)
    np.testing.assert_array_equal(run(first, x, 4), run(second, x, 4))


# ---- ort_library.py error handling ----


def test_session_options_rejects_bad_thread_counts():
    with pytest.raises(ValueError, match="num_threads"):
        ort_library.session_options(0)


def test_unbuildable_library_is_a_kernel_library_error(monkeypatch):
    from otaro_export.runtime_ops import build

    def broken(kind):
        raise OSError("disk full")

    monkeypatch.setattr(build, "library_path", broken)
    with pytest.raises(KernelLibraryError, match="disk full.*C\\+\\+17 compiler"):
        ort_library.session_options()


def test_unloadable_library_is_a_kernel_library_error(monkeypatch, tmp_path):
    from otaro_export.runtime_ops import build

    fake = tmp_path / "libotaro_sefp_onnxruntime.so"
    fake.write_bytes(b"not a shared library")
    monkeypatch.setattr(build, "library_path", lambda kind: fake)
    with pytest.raises(KernelLibraryError, match="could not load the SEFP custom-op library"):
        ort_library.session_options()
