import json

from typer.testing import CliRunner

from otaro_export.cli.main import app
from otaro_export.testing import tiny_causal_lm


def test_quantize_prints_table_and_json(tmp_path):
    loaded = tiny_causal_lm()
    loaded.model.save_pretrained(tmp_path / "m")
    out = tmp_path / "r.json"
    result = CliRunner().invoke(app, ["quantize", "--model", str(tmp_path / "m"), "--json", str(out)])
    assert result.exit_code == 0, result.output
    for bits in range(3, 9):
        assert f"E5M{bits}" in result.output
    data = json.loads(out.read_text())
    assert [p["bits"] for p in data["precisions"]] == [3, 4, 5, 6, 7, 8]


def test_bad_model_path_is_one_clean_error(tmp_path):
    import subprocess
    import sys

    proc = subprocess.run(
        [
            sys.executable,
            "-c",
            "from otaro_export.cli.main import main; main()",
            "quantize",
            "--model",
            str(tmp_path / "nope"),
        ],
        capture_output=True,
        text=True,
    )
    assert proc.returncode == 2
    assert "error:" in proc.stderr and "does not exist" in proc.stderr and "Traceback" not in proc.stderr
