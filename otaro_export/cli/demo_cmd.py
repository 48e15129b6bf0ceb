"""``otaro demo``: not available yet."""

from __future__ import annotations

from otaro_export.errors import OtaroError


def demo() -> None:
    """Not implemented yet in this build of otaro-export."""
    raise OtaroError("'otaro demo' is not implemented yet in this version of otaro-export")
