"""docs/FORMAT.md is the spec the code cites: citations must resolve, and its tables must match the code."""

import re
from pathlib import Path

import pytest

from otaro_export.packing import PLANE_BYTES_PER_GROUP, PLANE_MIN_BITS, bytes_per_weight_read
from otaro_export.sefp import SUPPORTED_BITS

ROOT = Path(__file__).resolve().parents[2]
FORMAT = ROOT / "docs" / "FORMAT.md"
SOURCES = ("otaro_export", "passes", "runtime_ops", "tests", "docs", "examples", "benchmarks", "README.md")
SUFFIXES = {".py", ".md", ".h", ".cc", ".toml", ".kt", ".swift"}


def _section(number: int) -> str:
    text = FORMAT.read_text()
    start = text.index(f"\n## §{number} ")
    end = text.find("\n## §", start + 1)
    return text[start : end if end != -1 else None]


def _project_files():
    for name in SOURCES:
        path = ROOT / name
        files = [path] if path.is_file() else sorted(path.rglob("*"))
        yield from (f for f in files if f.suffix in SUFFIXES and f.is_file() and ".venv" not in f.parts)


def test_sections_are_numbered_1_to_9():
    headings = re.findall(r"^## §(\d+) ", FORMAT.read_text(), flags=re.M)
    assert headings == [str(n) for n in range(1, 10)]


def test_every_citation_names_an_existing_section_and_nothing_cites_an_outside_spec():
    cited = 0
    for path in _project_files():
        text = path.read_text(errors="replace")
        assert "DESIGN" + ".md" not in text, f"{path} cites a spec that is not in the repository"
        for match in re.finditer(r"FORMAT\.md (§[\d§\-, ]+)", text):
            for number in re.findall(r"\d+", match.group(1)):
                assert 1 <= int(number) <= 9, f"{path}: {match.group(0)}"
                cited += 1
    assert cited > 10  # the code does cite the spec


def test_plane_table_matches_packing():
    rows = re.findall(
        r"^\| `(p\d)` \| uint8 `\[N, G\*(\d+)\]` \|.*\| (\d+) \| (every k|k >= \d|k = \d) \|$", _section(4), re.M
    )
    assert [r[0] for r in rows] == list(PLANE_BYTES_PER_GROUP)
    for plane, width, per_group, reader in rows:
        assert int(width) == int(per_group) == PLANE_BYTES_PER_GROUP[plane]
        assert (3 if reader == "every k" else int(reader[-1])) == PLANE_MIN_BITS[plane]


@pytest.mark.parametrize("bits", SUPPORTED_BITS)
def test_bits_read_table_matches_packing(bits):
    table = {}
    for names, value in re.findall(r"^\| (E5M\d(?:, E5M\d)?) \| [p0-9, ]+ \| ([\d.]+) \|", _section(2), re.M):
        for name in names.split(", "):
            table[int(name[-1])] = float(value)
    assert table[bits] == bytes_per_weight_read(bits) * 8
