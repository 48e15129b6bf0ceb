"""ExportOptions.validate: bad option values are clear errors before any work."""

import pytest

from otaro_export.errors import OtaroError
from otaro_export.export.pipeline import ExportOptions


@pytest.mark.parametrize(
    ("options", "message"),
    [
        (dict(target="executorch", attention="sdpa"), r"unknown --attention 'sdpa'; choose llm-ops .* or portable"),
        (dict(target="onnx", attention="portable"), r"--attention applies to --target executorch only"),
    ],
)
def test_bad_attention_is_a_clear_error(options, message):
    with pytest.raises(OtaroError, match=message):
        ExportOptions(**options).validate()


def test_attention_values_that_validate():
    for attention in (None, "llm-ops", "portable"):
        ExportOptions(target="executorch", attention=attention).validate()
    ExportOptions(target="onnx").validate()
