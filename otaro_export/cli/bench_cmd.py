"""``otaro bench``: not available yet."""

from __future__ import annotations

from otaro_export.errors import OtaroError


def bench() -> None:
    """Not implemented yet in this build of otaro-export."""
    raise OtaroError("'otaro bench' is not implemented yet in this version of otaro-export")
