"""Read the demo's TOML files (policy, task script) with one clear error type.

Python 3.11+ ships ``tomllib``; on 3.10 the ``tomli`` backport (a declared
dependency there) provides the same API.
"""

from __future__ import annotations

from pathlib import Path

from otaro_export.errors import OtaroError

try:
    import tomllib as _toml
except ModuleNotFoundError:  # Python 3.10
    try:
        import tomli as _toml  # type: ignore[no-redef]
    except ModuleNotFoundError:
        _toml = None


class DemoConfigError(OtaroError, ValueError):
    """A demo policy or task script is missing, malformed or inconsistent."""


def parse_toml(text: str, source: str) -> dict:
    """Parse TOML ``text``; ``source`` names it in errors (a path, or "built-in policy")."""
    if _toml is None:
        raise DemoConfigError(
            "reading TOML needs Python 3.11+ or the 'tomli' package on Python 3.10: pip install tomli"
        )
    try:
        return _toml.loads(text)
    except _toml.TOMLDecodeError as exc:
        raise DemoConfigError(f"{source} is not valid TOML: {exc}") from exc


def read_toml(path: str | Path) -> dict:
    p = Path(path)
    if not p.is_file():
        raise DemoConfigError(f"{p} does not exist or is not a file")
    try:
        text = p.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise DemoConfigError(f"cannot read {p}: {exc}") from exc
    return parse_toml(text, str(p))


def check_keys(table: dict, allowed: set[str], where: str) -> None:
    """Reject unknown keys: a typo in a policy must not silently fall back to a default."""
    unknown = sorted(set(table) - allowed)
    if unknown:
        raise DemoConfigError(f"{where}: unknown key(s) {unknown}; allowed: {sorted(allowed)}")
