"""The arm64 userland of the ARM64 check: Debian's arm64 packages + the runtimes' aarch64 wheels, for qemu-user.

``prepare_userland()`` returns a :class:`Userland` (downloading on first use, then cached under
``$OTARO_ARM64_CACHE``, default ``~/.cache/otaro-export/arm64``):

* ``root``: Debian's arm64 ``python3`` and ``libstdc++6`` with their dependencies, resolved by a private
  apt (its own lists and an empty package database; the host's apt state is untouched) and unpacked with
  ``dpkg-deb -x``. Programs run as ``qemu-aarch64 -L root PROGRAM`` (no binfmt, no chroot);
* ``site``: onnxruntime's and numpy's manylinux aarch64 wheels from PyPI, the host's versions;
* ``executorch``: the runtime libraries and headers of ExecuTorch's aarch64 wheel (its Python bindings
  need torch and are not used), or None with the reason in ``versions["executorch_unavailable"]``.

:func:`pte_runner` cross-builds examples/arm64/pte_runner.cc against that wheel.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import os
import shutil
import subprocess
import sys
import tempfile
import zipfile
from dataclasses import dataclass, field
from pathlib import Path

HERE = Path(__file__).resolve().parent
DEBIAN_KEYRING = Path("/usr/share/keyrings/debian-archive-keyring.gpg")
DEFAULT_MIRROR = "http://deb.debian.org/debian"
DEFAULT_SUITE = "bookworm"
ROOT_PACKAGES = ["python3", "libstdc++6"]
WHEEL_PLATFORMS = ["manylinux_2_28_aarch64", "manylinux_2_27_aarch64", "manylinux2014_aarch64"]


class Arm64Unavailable(RuntimeError):
    """A tool or a package the check needs cannot be had here (the tests skip with this reason)."""


def cache_root() -> Path:
    env = os.environ.get("OTARO_ARM64_CACHE")
    return Path(env).expanduser() if env else Path.home() / ".cache" / "otaro-export" / "arm64"


class CommandFailed(RuntimeError):
    """A command exited with an error; ``proc`` holds its whole output (the message only its tail)."""

    def __init__(self, message: str, proc: subprocess.CompletedProcess):
        super().__init__(message)
        self.proc = proc


def run_command(cmd: list, what: str, timeout: float = 900, env: dict | None = None) -> subprocess.CompletedProcess:
    try:
        proc = subprocess.run([str(c) for c in cmd], capture_output=True, text=True, timeout=timeout, env=env)
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise RuntimeError(f"{what} failed to run: {exc}") from exc
    if proc.returncode != 0:
        tail = (proc.stdout + proc.stderr).strip()[-2500:]
        raise CommandFailed(f"{what} failed (exit {proc.returncode}):\n$ {' '.join(map(str, cmd))}\n{tail}", proc)
    return proc


@contextlib.contextmanager
def _locked(path: Path):
    """One preparer at a time per cache (a test and run.sh may share it)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


@dataclass
class Userland:
    """An arm64 Debian root plus the aarch64 wheels, run with qemu-aarch64 -L."""

    root: Path
    python: Path  # root/usr/bin/python3.X
    python_version: str  # "3.11"
    site: Path  # onnxruntime + numpy for aarch64
    qemu: str
    suite: str
    cache: Path
    executorch: Path | None = None  # an unpacked aarch64 executorch wheel's executorch/ directory
    versions: dict = field(default_factory=dict)

    def env(self) -> dict:
        # A clean environment: the host's LD_LIBRARY_PATH or PYTHONHOME must not reach the guest.
        return {
            "PATH": "/usr/bin:/bin",
            "HOME": os.environ.get("HOME", "/tmp"),
            "LANG": "C.UTF-8",
            "PYTHONPATH": str(self.site),
            "PYTHONDONTWRITEBYTECODE": "1",
        }

    def command(self, program: Path | str, *args) -> list[str]:
        return [self.qemu, "-L", str(self.root), str(program), *map(str, args)]


def _require_tools() -> str:
    qemu = shutil.which("qemu-aarch64")
    missing = [
        hint
        for tool, hint in [
            ("qemu-aarch64", "qemu-user"),
            (os.environ.get("OTARO_CROSS_CXX", "aarch64-linux-gnu-g++"), "g++-aarch64-linux-gnu"),
            ("apt-get", "apt"),
            ("dpkg-deb", "dpkg"),
        ]
        if shutil.which(tool) is None
    ]
    if missing:
        raise Arm64Unavailable(f"missing tools; on Debian: apt-get install {' '.join(missing)}")
    if not DEBIAN_KEYRING.is_file():
        raise Arm64Unavailable(
            f"no Debian archive keyring at {DEBIAN_KEYRING} (apt-get install debian-archive-keyring)"
        )
    return qemu


def _write_cpuinfo(root: Path) -> None:
    """An ARM /proc/cpuinfo for the guest (qemu -L serves ROOT/proc/cpuinfo before the host's).

    onnxruntime's CPU detection (cpuinfo) parses /proc/cpuinfo at import; the host's x86 text made it
    crash with SIGSEGV. The fields describe a Cortex-A76, a common big core of phones; one entry per
    CPU the host's sysfs lists (which the guest also reads).
    """
    try:
        present = Path("/sys/devices/system/cpu/present").read_text().strip()
        count = sum(
            int(b) - int(a) + 1
            for a, _, b in (r.partition("-") if "-" in r else (r, "", r) for r in present.split(","))
        )
    except (OSError, ValueError):
        count = os.cpu_count() or 1
    entry = (
        "processor\t: {i}\nBogoMIPS\t: 50.00\n"
        "Features\t: fp asimd evtstrm aes pmull sha1 sha2 crc32 atomics fphp asimdhp cpuid asimdrdm lrcpc dcpop asimddp\n"
        "CPU implementer\t: 0x41\nCPU architecture: 8\nCPU variant\t: 0x4\nCPU part\t: 0xd0b\nCPU revision\t: 1\n\n"
    )
    (root / "proc").mkdir(exist_ok=True)
    (root / "proc" / "cpuinfo").write_text("".join(entry.format(i=i) for i in range(count)))


def _debian_root(cache: Path, suite: str, mirror: str, log) -> Path:
    """Debian's arm64 ``python3`` + ``libstdc++6`` and their dependencies, unpacked into one directory."""
    base = cache / f"debian-{suite}-arm64"
    root = base / "root"
    if (base / "complete").is_file():
        return root
    log(f"arm64 userland: resolving {', '.join(ROOT_PACKAGES)} for Debian {suite} arm64 ({mirror})")
    apt = base / "apt"
    shutil.rmtree(apt, ignore_errors=True)
    for sub in ["state/lists/partial", "cache/archives/partial", "etc/sources.list.d", "etc/preferences.d"]:
        (apt / sub).mkdir(parents=True, exist_ok=True)
    (apt / "state" / "status").touch()
    (apt / "etc" / "sources.list").write_text(f"deb [arch=arm64 signed-by={DEBIAN_KEYRING}] {mirror} {suite} main\n")
    # A private apt: its own lists, cache and an empty package database, arm64 only (the host's untouched).
    opts = [
        f"-oDir::State={apt / 'state'}",
        f"-oDir::State::status={apt / 'state' / 'status'}",
        f"-oDir::Cache={apt / 'cache'}",
        f"-oDir::Etc::SourceList={apt / 'etc' / 'sources.list'}",
        f"-oDir::Etc::SourceParts={apt / 'etc' / 'sources.list.d'}",
        f"-oDir::Etc::Preferences={apt / 'etc' / 'preferences'}",
        f"-oDir::Etc::PreferencesParts={apt / 'etc' / 'preferences.d'}",
        "-oAPT::Architecture=arm64",
        "-oAPT::Architectures::=arm64",
        "-oDebug::NoLocking=1",
        "-oAcquire::Retries=3",
    ]
    try:
        run_command(["apt-get", *opts, "-qq", "update"], f"apt-get update for Debian {suite} arm64", timeout=600)
        run_command(
            ["apt-get", *opts, "-qq", "-y", "--no-install-recommends", "install", "--download-only", *ROOT_PACKAGES],
            "downloading Debian arm64 packages",
            timeout=900,
        )
    except RuntimeError as exc:
        raise Arm64Unavailable(f"cannot get Debian's arm64 packages from {mirror}: {exc}") from exc
    debs = sorted((apt / "cache" / "archives").glob("*.deb"))
    staged = Path(tempfile.mkdtemp(dir=base, prefix=".root-"))
    for deb in debs:
        run_command(["dpkg-deb", "-x", deb, staged], f"unpacking {deb.name}")
    if root.exists():
        shutil.rmtree(root)
    os.replace(staged, root)
    (base / "packages.txt").write_text("".join(d.name + "\n" for d in debs))
    shutil.rmtree(apt / "cache" / "archives", ignore_errors=True)  # the unpacked tree is what is kept
    (base / "complete").touch()
    log(f"arm64 userland: {len(debs)} Debian packages unpacked into {root}")
    return root


def _pip(args: list[str], what: str) -> None:
    try:
        run_command([sys.executable, "-m", "pip", "--disable-pip-version-check", *args], what, timeout=900)
    except RuntimeError as exc:
        raise Arm64Unavailable(f"{what}: {exc}") from exc


def _platform_args(python_version: str) -> list[str]:
    abi = "cp" + python_version.replace(".", "")
    args = ["--only-binary=:all:", "--python-version", python_version, "--implementation", "cp", "--abi", abi]
    for plat in WHEEL_PLATFORMS:
        args += ["--platform", plat]
    return args


def _host_version(dist: str) -> str | None:
    """The host's release of ``dist`` without a local label (PyPI's aarch64 wheels have none: 1.5.1+cpu -> 1.5.1)."""
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version(dist).split("+")[0]
    except PackageNotFoundError:
        return None


def _onnxruntime_site(cache: Path, python_version: str, log) -> tuple[Path, dict]:
    versions = {"onnxruntime": _host_version("onnxruntime"), "numpy": _host_version("numpy")}
    site = (
        cache
        / f"site-cp{python_version.replace('.', '')}-onnxruntime-{versions['onnxruntime']}-numpy-{versions['numpy']}"
    )
    if not (site / ".complete").is_file():
        log(
            f"arm64 wheels: onnxruntime {versions['onnxruntime']} + numpy {versions['numpy']} for aarch64 Python {python_version}"
        )
        staged = Path(tempfile.mkdtemp(dir=cache, prefix=".site-"))
        specs = [f"onnxruntime=={versions['onnxruntime']}", f"numpy=={versions['numpy']}"]
        _pip(
            ["install", "-q", "--target", str(staged), *_platform_args(python_version), *specs], "pip (aarch64 wheels)"
        )
        (staged / ".complete").touch()
        if site.exists():
            shutil.rmtree(site)
        os.replace(staged, site)
    return site, versions


def _executorch_wheel(cache: Path, python_version: str, log) -> tuple[Path | None, str | None]:
    """The aarch64 executorch wheel's runtime libraries and headers, or (None, reason)."""
    version = _host_version("executorch")
    if version is None:
        return None, "executorch is not installed on the host"
    base = cache / f"executorch-{version}-cp{python_version.replace('.', '')}-aarch64"
    if (base / ".complete").is_file():
        return base / "executorch", None
    log(f"arm64 wheels: executorch {version} for aarch64 Python {python_version} (runtime libraries + headers)")
    with tempfile.TemporaryDirectory(dir=cache) as tmp:
        try:
            _pip(
                ["download", "-q", "--no-deps", "-d", tmp, *_platform_args(python_version), f"executorch=={version}"],
                "pip download (executorch aarch64)",
            )
        except Arm64Unavailable as exc:
            return None, f"no aarch64 executorch {version} wheel for Python {python_version} ({exc})"
        wheel = next(Path(tmp).glob("executorch-*.whl"))
        staged = Path(tempfile.mkdtemp(dir=cache, prefix=".et-"))
        with zipfile.ZipFile(wheel) as zf:
            members = [m for m in zf.namelist() if m.startswith(("executorch/include/", "executorch/lib/"))]
            zf.extractall(staged, members)
    (staged / ".complete").touch()
    if base.exists():
        shutil.rmtree(base)
    os.replace(staged, base)
    return base / "executorch", None


def prepare_userland(cache: Path | None = None, executorch: bool = False, log=print) -> Userland:
    """Download (first run) and return the cached arm64 userland; raises Arm64Unavailable if it cannot."""
    qemu = _require_tools()
    cache = Path(cache or cache_root())
    suite = os.environ.get("OTARO_ARM64_SUITE", DEFAULT_SUITE)
    mirror = os.environ.get("OTARO_ARM64_MIRROR", DEFAULT_MIRROR)
    with _locked(cache / ".lock"):
        root = _debian_root(cache, suite, mirror, log)
        pythons = sorted((root / "usr" / "bin").glob("python3.[0-9]*"))
        pythons = [p for p in pythons if p.name.replace("python", "").replace(".", "").isdigit()]
        if not pythons:
            raise Arm64Unavailable(f"the Debian {suite} arm64 userland at {root} has no python3.X")
        python = pythons[-1]
        python_version = python.name.removeprefix("python")
        _write_cpuinfo(root)
        site, versions = _onnxruntime_site(cache, python_version, log)
        et_root, et_reason = _executorch_wheel(cache, python_version, log) if executorch else (None, None)
    userland = Userland(root, python, python_version, site, qemu, suite, cache, et_root, versions)
    if et_reason:
        userland.versions["executorch_unavailable"] = et_reason
    elif et_root is not None:
        userland.versions["executorch"] = _host_version("executorch")
    return userland


def pte_runner(userland: Userland, log=print) -> Path:
    """examples/arm64/pte_runner.cc cross-built against the aarch64 executorch wheel (cached by content)."""
    cxx = os.environ.get("OTARO_CROSS_CXX", "aarch64-linux-gnu-g++")
    source = HERE / "pte_runner.cc"
    et = userland.executorch
    version = run_command([cxx, "--version"], "the cross compiler").stdout
    digest = hashlib.sha256(source.read_bytes() + version.encode() + str(et).encode()).hexdigest()[:16]
    out = userland.cache / "bin" / digest / "pte_runner"
    if out.is_file():
        return out
    log("building pte_runner for aarch64 against the executorch wheel's libexecutorch.so")
    out.parent.mkdir(parents=True, exist_ok=True)
    c10 = et / "include" / "executorch" / "runtime" / "core" / "portable_type" / "c10"
    staged = out.parent / f".pte_runner.{os.getpid()}"
    # --no-as-needed: the kernel and backend libraries register themselves when loaded; nothing calls them.
    run_command(
        [cxx, "-std=c++17", "-O2", "-DC10_USING_CUSTOM_GENERATED_MACROS", "-isystem", et / "include", "-isystem", c10]
        + [source, "-o", staged, f"-L{et / 'lib'}", f"-Wl,-rpath,{et / 'lib'}", "-Wl,--no-as-needed"]
        + ["-lexecutorch", "-lexecutorch_kernels_optimized", "-lexecutorch_backend_xnnpack", "-lexecutorch_threadpool"]
        + ["-Wl,--as-needed", "-ldl"],
        "building pte_runner",
    )
    os.replace(staged, out)
    return out
