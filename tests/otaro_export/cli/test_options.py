import pytest

from otaro_export.cli.options import parse_bits, parse_choices, parse_list
from otaro_export.errors import OtaroError


def test_parse_bits_keeps_order_and_drops_blanks_and_duplicates():
    assert parse_bits("8, 3,,4,3") == (8, 3, 4)
    assert parse_bits("5") == (5,)


@pytest.mark.parametrize(
    "text, message",
    [
        ("3,x", "--laa-bits: expected comma-separated mantissa bit counts like 3,4,5, got '3,x'"),
        ("2,3", "--laa-bits: bits must be one of [3, 4, 5, 6, 7, 8] (E5M3..E5M8), got 2"),
        ("9", "(E5M3..E5M8), got 9"),
        (" , ", "--laa-bits: no values given"),
        ("3.5", "expected comma-separated mantissa bit counts"),
    ],
)
def test_parse_bits_errors_name_the_option(text, message):
    with pytest.raises(OtaroError) as info:
        parse_bits(text, "--laa-bits")
    assert message in str(info.value)


def test_parse_list_and_choices():
    assert parse_list(" onnx ,executorch,onnx", "--targets") == ("onnx", "executorch")
    assert parse_choices("executorch", "--targets", ("onnx", "executorch")) == ("executorch",)
    with pytest.raises(OtaroError, match="--targets: unknown value\\(s\\) tflite; choose from onnx, executorch"):
        parse_choices("onnx,tflite", "--targets", ("onnx", "executorch"))
