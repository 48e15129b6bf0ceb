"""Option values the CLI commands share: one parser per kind of value, errors that name the option.

Errors are :class:`OtaroError`, which the entry point prints as one ``error: ...`` line (exit 2).
"""

from __future__ import annotations

from collections.abc import Iterable

from otaro_export.errors import InvalidBitsError, OtaroError
from otaro_export.sefp import check_bits


def parse_list(text: str, option: str) -> tuple[str, ...]:
    """``"a, b,,c"`` -> ``("a", "b", "c")``: comma-separated, blanks dropped, order kept, duplicates dropped."""
    items = tuple(dict.fromkeys(part.strip() for part in text.split(",") if part.strip()))
    if not items:
        raise OtaroError(f"{option}: no values given (expected a comma-separated list)")
    return items


def parse_choices(text: str, option: str, choices: Iterable[str]) -> tuple[str, ...]:
    """A comma-separated subset of ``choices``, e.g. ``--targets onnx,executorch``."""
    allowed = tuple(choices)
    items = parse_list(text, option)
    unknown = [item for item in items if item not in allowed]
    if unknown:
        raise OtaroError(f"{option}: unknown value(s) {', '.join(unknown)}; choose from {', '.join(allowed)}")
    return items


def parse_bits(text: str, option: str = "--bits") -> tuple[int, ...]:
    """``"3,4,5"`` -> ``(3, 4, 5)``: SEFP precisions (E5Mk mantissa bits, 3..8) in the order given."""
    bits = []
    for item in parse_list(text, option):
        try:
            value = int(item)
        except ValueError as exc:
            raise OtaroError(
                f"{option}: expected comma-separated mantissa bit counts like 3,4,5, got {text!r}"
            ) from exc
        try:
            bits.append(check_bits(value))
        except InvalidBitsError as exc:
            raise OtaroError(f"{option}: {exc}") from exc
    return tuple(bits)
