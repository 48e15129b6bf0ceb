"""examples/android: the app's platform-free Kotlin (bundle parsing + engine) compiles, as far as tools here allow.

Runs examples/android/check/compile_check.sh: Debian's kotlinc against Android's org.json and stubs of
the onnxruntime Java API (the real AAR is on Maven only). MainActivity.kt needs android.jar and is not
compiled anywhere here (see examples/android/README.md).
"""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

CHECK = Path(__file__).resolve().parents[2] / "examples" / "android" / "check" / "compile_check.sh"
ANDROID_JSON = Path("/usr/share/java/com.android.json.jar")


def test_engine_and_bundle_kotlin_compile_against_the_onnxruntime_api_stubs():
    missing = [tool for tool in ("kotlinc", "javac") if shutil.which(tool) is None]
    if missing or not ANDROID_JSON.is_file():
        pytest.skip(f"needs kotlinc, javac and {ANDROID_JSON} (Debian: apt-get install kotlin libandroid-json-java)")
    proc = subprocess.run(["sh", str(CHECK)], capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, (proc.stdout + proc.stderr)[-4000:]
    assert "compile check passed: DemoBundle.kt, DemoEngine.kt" in proc.stdout
