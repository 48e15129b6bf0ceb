"""``otaro eval``: not available yet."""

from __future__ import annotations

from otaro_export.errors import OtaroError


def evaluate() -> None:
    """Not implemented yet in this build of otaro-export."""
    raise OtaroError("'otaro eval' is not implemented yet in this version of otaro-export")
