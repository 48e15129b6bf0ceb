"""ExecuTorchSession: one .pte, one loaded method, every precision; KV cache; errors.

Tolerance (all parity checks): the dequantized weights are exact on both sides,
but XNNPACK's fp32 GEMM (and the fused kernel) sum the K <= 96 products of each
dot product in a different order than eager torch. Float32 rounding of such a
sum is ~1e-6 relative per layer; through 2 decoder layers, attention softmax
and the lm_head the logits (|logit| ~ 3) agree to ~2e-6 in practice, so 1e-4
absolute + relative leaves a wide margin while still catching a wrong precision
(neighbouring precisions differ by > 1e-2).
"""

import copy
import json
import mmap
import os
import re
import subprocess
import sys
import types

import numpy as np
import pytest
import torch

from otaro_export import process_memory as memory
from otaro_export.convert import convert_model, dequantized_copy
from otaro_export.errors import ArtifactError, InvalidBitsError, KernelLibraryError
from otaro_export.runtime import load
from otaro_export.runtime.executorch_session import ExecuTorchSession, ensure_kernel_library, release_locked_pages
from otaro_export.sefp import SUPPORTED_BITS
from otaro_export.testing import tiny_executorch_artifact

TOL = dict(rtol=1e-4, atol=1e-4)
IDS = np.array([[5, 17, 100, 3, 250, 9, 42, 77]], dtype=np.int64)

# fused: Llama, 2 layers (multi-layer KV cache); portable: Qwen2 (q/k/v biases through the
# decomposed op), 1 layer (its lowering is ~2x slower per layer). The export tests reuse both.
CONFIGS = {
    "fused": dict(model_type="llama", kernels="fused", num_layers=2),
    "portable": dict(model_type="qwen2", kernels="portable", num_layers=1),
}


@pytest.fixture(scope="session")
def et_root(tmp_path_factory):
    # getbasetemp() is shared by the whole pytest run: export tests reuse these exports
    return tmp_path_factory.getbasetemp() / "tiny-executorch"


@pytest.fixture(scope="module", params=list(CONFIGS))
def artifact(request, et_root):
    directory, loaded = tiny_executorch_artifact(et_root, **CONFIGS[request.param])
    converted = copy.deepcopy(loaded.model)
    convert_model(converted)
    return types.SimpleNamespace(kind=request.param, dir=directory, model=converted, session=load(directory))


def _reference(model, ids: np.ndarray, bits: int) -> np.ndarray:
    with torch.no_grad():
        return dequantized_copy(model, bits)(torch.from_numpy(ids)).logits.numpy()


def test_every_precision_from_one_loaded_method(artifact):
    session = artifact.session
    assert isinstance(session, ExecuTorchSession)
    method = session._method
    results = {}
    for bits in SUPPORTED_BITS:
        results[bits] = session.forward(IDS, bits)
        np.testing.assert_allclose(results[bits], _reference(artifact.model, IDS, bits), **TOL)
    assert session._method is method  # nothing was reloaded
    # bits really reaches the layers: neighbouring precisions give different logits
    for lo, hi in zip(SUPPORTED_BITS, SUPPORTED_BITS[1:]):
        assert np.abs(results[lo] - results[hi]).max() > 1e-3
    # and switching back gives the earlier result exactly (same program, same inputs)
    np.testing.assert_array_equal(session.forward(IDS, 3), results[3])


def test_kv_cache_decode_equals_full_forward(artifact):
    session, bits = artifact.session, 5
    session._reset()
    parts = [session._step(IDS[:, :5], 0, bits)]
    for pos in range(5, IDS.shape[1]):
        parts.append(session._step(IDS[:, pos : pos + 1], pos, bits))
    decoded = np.concatenate(parts, axis=1)
    np.testing.assert_allclose(decoded, _reference(artifact.model, IDS, bits), **TOL)
    np.testing.assert_allclose(decoded, session.forward(IDS, bits), **TOL)


def test_reset_gives_fresh_results_after_a_longer_sequence(artifact):
    session = artifact.session
    short = IDS[:, :3]
    first = session.forward(short, 8)
    long_ids = np.arange(1, 30, dtype=np.int64)[None]  # fills most of the 32-slot cache
    session.forward(long_ids, 8)
    # stale cache slots 3..28 must be invisible to the new sequence
    np.testing.assert_array_equal(session.forward(short, 8), first)
    np.testing.assert_allclose(first, _reference(artifact.model, short, 8), **TOL)


def test_greedy_generation_matches_torch_reference(artifact):
    session, bits, prompt = artifact.session, 4, [3, 60, 61, 62]
    got = session.generate_ids(prompt, bits, 6, stop_at_eos=False)
    ref = dequantized_copy(artifact.model, bits)
    ids = torch.tensor([prompt])
    want = []
    with torch.no_grad():
        for _ in range(6):
            token = int(ref(ids).logits[0, -1].argmax())
            want.append(token)
            ids = torch.cat([ids, torch.tensor([[token]])], dim=1)
    assert got == want


def test_bad_bits_and_positions_raise(artifact):
    session = artifact.session
    with pytest.raises(InvalidBitsError):
        session.forward(IDS, 9)
    with pytest.raises(ValueError, match="KV cache"):
        session._step(IDS, session.max_seq_len - 2, 8)
    # below the Python check, the program itself rejects bits outside 3..8
    with pytest.raises(ArtifactError, match="execution failed"):
        session._step(IDS, 0, 2)


def _run_python(code: str, timeout: int = 300) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=timeout)


def test_pte_loads_in_a_fresh_process(artifact, tmp_path):
    want = artifact.session.forward(IDS, 6)
    out = tmp_path / "logits.npy"
    code = f"""
import numpy as np
from otaro_export.runtime import load
s = load({str(artifact.dir / "model.pte")!r})
np.save({str(out)!r}, s.forward(np.array({IDS.tolist()}), 6))
maps = open('/proc/self/maps').read()
print('KERNEL_LIBRARY_LOADED' if 'libotaro_sefp_executorch' in maps else 'STOCK_RUNTIME_ONLY')
print([l for l in open('/proc/self/status') if l.startswith('VmLck')][0])
"""
    proc = _run_python(code)
    assert proc.returncode == 0, proc.stderr[-2000:]
    np.testing.assert_array_equal(np.load(out), want)
    expected = "KERNEL_LIBRARY_LOADED" if artifact.kind == "fused" else "STOCK_RUNTIME_ONLY"
    assert expected in proc.stdout
    # the runtime's mlock of the mmapped file was undone: weight pages load on use
    assert re.search(r"VmLck:\s+0 kB", proc.stdout), proc.stdout


def test_missing_kernel_library_error_names_the_fix(monkeypatch):
    import otaro_export.runtime.executorch_session as mod

    def fail():
        raise KernelLibraryError("g++ not found")

    monkeypatch.setattr(mod, "_load_kernel_library", fail)
    no_ops = types.SimpleNamespace(operator_registry=types.SimpleNamespace(operator_names=set()))
    with pytest.raises(KernelLibraryError) as err:
        ensure_kernel_library(no_ops)
    message = str(err.value)
    assert "g++ not found" in message and "load_executorch_kernels" in message and "--kernels portable" in message


def test_missing_kernel_library_fails_cleanly_in_the_cli(et_root, tmp_path):
    """A fresh process that cannot build the library: one clean error line, no traceback, no abort."""
    directory, _ = tiny_executorch_artifact(et_root, **CONFIGS["fused"])
    env = dict(os.environ, CXX=str(tmp_path / "no-such-compiler"), OTARO_KERNEL_CACHE_DIR=str(tmp_path / "cache"))
    code = (
        "from otaro_export.cli.main import main; import sys; "
        f"sys.argv=['otaro','run',{str(directory)!r},'-p','hi','-b','3']; main()"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=300)
    assert proc.returncode > 0, (proc.returncode, proc.stderr[-2000:])  # an error exit, not a signal
    assert "--kernels portable" in proc.stderr and "Traceback" not in proc.stderr


def test_corrupt_pte_is_rejected_cleanly(et_root, tmp_path):
    directory, _ = tiny_executorch_artifact(et_root, **CONFIGS["portable"])
    good = (directory / "model.pte").read_bytes()
    damaged = {
        "truncated": good[: len(good) // 3],
        "garbled": good[:8] + bytes(b ^ 0x5A for b in good[8:4096]) + good[4096:],
    }
    for name, data in damaged.items():
        (tmp_path / name).mkdir()
        (tmp_path / name / "manifest.json").write_bytes((directory / "manifest.json").read_bytes())
        (tmp_path / name / "model.pte").write_bytes(data)
    # In a subprocess: a crash (signal) in the native loader must not take the test run down.
    code = f"""
from otaro_export.errors import ArtifactError
from otaro_export.runtime import load
for name in {list(damaged)!r}:
    try:
        load({str(tmp_path)!r} + '/' + name).forward([[1, 2, 3]], 8)
    except ArtifactError as exc:
        print('REJECTED', name)
"""
    proc = _run_python(code)
    assert proc.returncode == 0, (proc.returncode, proc.stderr[-2000:])
    assert all(f"REJECTED {name}" in proc.stdout for name in damaged), proc.stdout


def test_cli_run_generates_at_a_chosen_precision(artifact):
    from typer.testing import CliRunner

    from otaro_export.cli.main import app

    result = CliRunner().invoke(app, ["run", str(artifact.dir / "model.pte"), "--bits", "3", "-p", "hi", "-n", "4"])
    assert result.exit_code == 0, result.output
    assert "[E5M3]" in result.output


def test_manifest_names_the_kernel_library(artifact):
    manifest = json.loads((artifact.dir / "manifest.json").read_text())
    assert manifest["target"] == "executorch" and manifest["artifact"] == "model.pte"
    assert manifest["inputs"] == ["input_ids", "cache_position", "bits"]
    assert manifest["kernel_library"] == ("executorch" if artifact.kind == "fused" else None)


def test_release_locked_pages_drops_the_mapping_until_touched_again(tmp_path):
    path = tmp_path / "weights.bin"
    page = mmap.PAGESIZE
    path.write_bytes(b"\x02" * (page * 64))
    with open(path, "rb") as f:
        mm = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ)
        try:
            assert sum(mm[i * page] for i in range(64)) == 128
            assert memory.mapped_file_rss_mib(path) == 64 * page / 2**20
            assert release_locked_pages(path) >= 64 * page
            assert memory.mapped_file_rss_mib(path) == 0.0
            assert mm[5 * page] == 2  # data intact: re-read from the page cache
            assert 0 < memory.mapped_file_rss_mib(path) <= 64 * page / 2**20
        finally:
            mm.close()
