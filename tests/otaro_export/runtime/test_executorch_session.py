"""ExecuTorchSession: one .pte, one loaded method, every precision; KV cache; mmap without mlock; errors.

Reference: the artifact's own stored SEFP bits (fused: read out of the .pte;
portable: re-encoded with the recipe the manifest records), dequantized into the
ONNX exporter's ExportDecoder running torch reference attention
(otaro_export.export.executorch_reference). Tolerance: the dequantized weights
are exact on both sides, but the fused kernel and ExecuTorch's attention sum the
K <= 96 products of each dot product in another order than eager torch: ~1e-6
relative per layer; through 2 decoder layers, softmax and the lm_head the logits
(|logit| ~ 3) agree to ~3e-6 in practice, so 1e-4 absolute + relative leaves a
wide margin while still catching a wrong precision (neighbouring precisions
differ by > 1e-2).
"""

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
from otaro_export.errors import ArtifactError, InvalidBitsError, KernelLibraryError
from otaro_export.export.executorch_reference import reference_decoder
from otaro_export.export.onnx_reference import reference_logits
from otaro_export.runtime import load
from otaro_export.runtime.executorch_session import (
    ExecuTorchSession,
    ensure_kernel_library,
    needs_llm_custom_ops,
    release_locked_pages,
)
from otaro_export.sefp import SUPPORTED_BITS
from otaro_export.testing import TINY_VOCAB, tiny_causal_lm, tiny_executorch_artifact

TOL = dict(rtol=1e-4, atol=1e-4)
IDS = np.array([[5, 17, 100, 3, 250, 9, 42, 77]], dtype=np.int64)

# fused: Llama, 2 layers (multi-layer KV cache); portable: Qwen2 (q/k/v biases through the
# decomposed op), 1 layer (its lowering is slower per layer). The export tests reuse both.
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
    config = CONFIGS[request.param]
    directory, _ = tiny_executorch_artifact(et_root, **config)
    fresh = tiny_causal_lm(config["model_type"], num_hidden_layers=config["num_layers"])
    return types.SimpleNamespace(
        kind=request.param, dir=directory, model=fresh.model, tokenizer=fresh.tokenizer, session=load(directory)
    )


def _reference(artifact, ids: np.ndarray, bits: int) -> np.ndarray:
    decoder = reference_decoder(artifact.dir, artifact.model, bits, artifact.tokenizer)
    return reference_logits(decoder, torch.from_numpy(ids)).numpy()


def test_every_precision_from_one_loaded_method(artifact):
    session = artifact.session
    assert isinstance(session, ExecuTorchSession)
    method = session._method
    results = {}
    for bits in SUPPORTED_BITS:
        results[bits] = session.forward(IDS, bits)
        np.testing.assert_allclose(results[bits], _reference(artifact, IDS, bits), **TOL)
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
    np.testing.assert_allclose(decoded, _reference(artifact, IDS, bits), **TOL)
    np.testing.assert_allclose(decoded, session.forward(IDS, bits), **TOL)


def test_reset_gives_fresh_results_after_a_longer_sequence(artifact):
    session = artifact.session
    short = IDS[:, :3]
    first = session.forward(short, 8)
    long_ids = np.arange(1, 30, dtype=np.int64)[None]  # fills most of the 32-slot cache
    session.forward(long_ids, 8)
    # stale cache slots 3..28 must be invisible to the new sequence
    np.testing.assert_array_equal(session.forward(short, 8), first)
    np.testing.assert_allclose(first, _reference(artifact, short, 8), **TOL)


def test_greedy_generation_matches_torch_reference(artifact):
    session, bits, prompt = artifact.session, 4, [3, 60, 61, 62]
    got = session.generate_ids(prompt, bits, 6, stop_at_eos=False)
    ref = reference_decoder(artifact.dir, artifact.model, bits, artifact.tokenizer)
    ids = torch.tensor([prompt])
    want = []
    for _ in range(6):
        token = int(reference_logits(ref, ids)[0, -1].argmax())
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


def test_fused_kernels_use_the_kernel_pool_sized_by_the_session(et_root):
    """The SEFP kernels split rows over the kernel core's pool, as many threads as the session asked for.

    Fresh process: the pool and ExecuTorch's thread count are process-wide. Its workers are named
    otaro-kernels; a 1-thread session must start none, a 2-thread one exactly one (the caller works too).
    """
    directory, _ = tiny_executorch_artifact(et_root, **CONFIGS["fused"])
    code = f"""
import os, numpy as np
from otaro_export.runtime import load
def workers():
    names = []
    for task in os.listdir('/proc/self/task'):
        try:
            names.append(open(f'/proc/self/task/{{task}}/comm').read().strip())
        except OSError:
            pass
    return names.count('otaro-kernels')
ids = np.array([list(range(3, 35))])
one = load({str(directory)!r}, num_threads=1)
one.forward(ids, 3)
print('ONE', workers())
two = load({str(directory)!r}, num_threads=2)
np.testing.assert_array_equal(two.forward(ids, 3), one.forward(ids, 3))
print('TWO', workers())
"""
    proc = _run_python(code)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "ONE 0" in proc.stdout and "TWO 1" in proc.stdout, proc.stdout


def test_portable_attention_loads_without_the_llm_custom_ops(et_root, tmp_path):
    """A --attention portable .pte never loads ExecuTorch's llama:: kernels (libcustom_ops_aot_lib)."""
    directory, _ = tiny_executorch_artifact(et_root, "llama", kernels="fused", num_layers=2, attention="portable")
    code = f"""
import numpy as np
from otaro_export.runtime import load
s = load({str(directory)!r})
assert s.forward(np.array({IDS.tolist()}), 3).shape == (1, {IDS.shape[1]}, {TINY_VOCAB})
print('LLM_OPS_LOADED' if 'custom_ops_aot_lib' in open('/proc/self/maps').read() else 'NO_LLM_OPS')
"""
    proc = _run_python(code)
    assert proc.returncode == 0 and "NO_LLM_OPS" in proc.stdout, proc.stdout + proc.stderr[-2000:]


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
    assert manifest["inputs"] == ["input_ids", "input_pos", "bits", "logits_positions"]
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


def test_last_only_step_gives_the_last_row(artifact):
    session = artifact.session
    full = session.forward(IDS, 6)
    session._reset()
    last = session._step(IDS, 0, 6, last_only=True)
    assert last.shape == (1, 1, full.shape[-1])
    np.testing.assert_allclose(last[0, 0], full[0, -1], rtol=1e-5, atol=1e-5)


def test_a_pte_from_an_older_export_is_refused_with_the_fix(et_root, tmp_path):
    directory, _ = tiny_executorch_artifact(et_root, **CONFIGS["fused"])
    manifest = json.loads((directory / "manifest.json").read_text())
    manifest["inputs"] = ["input_ids", "cache_position", "bits"]
    old = tmp_path / "old"
    old.mkdir()
    (old / "manifest.json").write_text(json.dumps(manifest))
    (old / "model.pte").write_bytes((directory / "model.pte").read_bytes())
    with pytest.raises(ArtifactError, match="re-export"):
        load(old, verify=False)


@pytest.fixture(scope="module")
def medium_fused(tmp_path_factory):
    """A fused export whose planes span many pages (a 256-wide, 1024-token model): memory tests."""
    from otaro_export.export.pipeline import ExportOptions, export_model

    loaded = tiny_causal_lm("llama", hidden_size=256, intermediate_size=768, vocab_size=1024)
    out = tmp_path_factory.mktemp("medium-et") / "fused"
    export_model(ExportOptions(target="executorch", output=out, max_seq_len=32), log=lambda _m: None, loaded=loaded)
    return out


def test_resident_weights_follow_the_precision(medium_fused):
    """Default load: mmap, no mlock; E5M3 pages in p0 + exponents (one prefix of the file), E5M8 the rest."""
    from otaro_export.export.executorch_reference import stored_layers

    layers = stored_layers(medium_fused)
    planes = {k: sum(t[k].numel() * t[k].element_size() for t in layers.values()) for k in ("p0", "p1", "p2", "p3")}
    small = sum(t["exponents"].numel() + t["levels"].numel() * 4 for t in layers.values())
    pte = medium_fused / "model.pte"
    code = f"""
import os, numpy as np
from otaro_export import process_memory as memory
from otaro_export.runtime import load
path = {str(pte)!r}
fd = os.open(path, os.O_RDONLY); os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED); os.close(fd)
s = load({str(medium_fused)!r}, verify=False)
print('LOAD', memory.mapped_file_rss_mib(path) * 2**20)
s.forward(np.array([[1, 2, 3]]), 3)
print('E5M3', memory.mapped_file_rss_mib(path) * 2**20)
s.forward(np.array([[1, 2, 3]]), 8)
print('E5M8', memory.mapped_file_rss_mib(path) * 2**20)
print([l for l in open('/proc/self/status') if l.startswith('VmLck')][0])
"""
    proc = _run_python(code)
    assert proc.returncode == 0, proc.stderr[-2000:]
    rss = {k: float(v) for k, v in re.findall(r"^(LOAD|E5M3|E5M8) ([\d.]+)$", proc.stdout, re.M)}
    assert re.search(r"VmLck:\s+0 kB", proc.stdout), proc.stdout
    total = sum(planes.values()) + small
    e5m3 = planes["p0"] + small
    assert rss["LOAD"] < 0.1 * total, (rss, total)
    # E5M3: its planes plus the other constants (norms, rotary tables: < 64 KiB) and one page window per edge
    assert rss["E5M3"] <= e5m3 + 256 * 1024, (rss, e5m3)
    assert rss["E5M3"] >= 0.9 * e5m3, (rss, e5m3)
    assert rss["E5M8"] >= 0.95 * total, (rss, total)


def test_a_step_runs_with_openmp_teams_kept_from_nesting(artifact, monkeypatch):
    # llama::custom_sdpa's MKL would open an OpenMP team inside each pool thread (openmp_nesting.py)
    from otaro_export.runtime.openmp_nesting import loaded_openmp_runtimes

    paths = loaded_openmp_runtimes()
    if not paths:
        pytest.skip("no OpenMP runtime is loaded in this process")
    import ctypes

    libs = [ctypes.CDLL(str(p)) for p in paths]
    session, real = artifact.session, artifact.session._method
    seen = []

    class Recording:
        def execute(self, inputs):
            seen.append([lib.omp_get_max_active_levels() for lib in libs])
            return real.execute(inputs)

    before = [lib.omp_get_max_active_levels() for lib in libs]
    monkeypatch.setattr(session, "_method", Recording())
    session.forward(IDS, 3)
    assert seen == [[0] * len(libs)]
    assert [lib.omp_get_max_active_levels() for lib in libs] == before


def test_only_programs_that_call_llama_ops_load_executorch_s_llm_custom_ops():
    from otaro_export.manifest import LLM_CUSTOM_OPS

    def manifest(**extra):
        return types.SimpleNamespace(extra=extra)

    assert not needs_llm_custom_ops(manifest(attention="llm-ops", runtime_ops=[]))  # fused: otaro_llm::kv_attention
    assert needs_llm_custom_ops(manifest(attention="llm-ops", runtime_ops=[LLM_CUSTOM_OPS]))  # fp32 programs
    assert not needs_llm_custom_ops(manifest(attention="portable", runtime_ops=[]))
    assert needs_llm_custom_ops(manifest(attention="llm-ops"))  # a manifest from before runtime_ops was recorded
    assert needs_llm_custom_ops(manifest())
    assert not needs_llm_custom_ops(manifest(attention="portable"))
