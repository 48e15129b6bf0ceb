"""Per-token UTF-8 bytes of a byte-level BPE vocabulary, so that apps can detokenize by table lookup.

A mobile app then needs no tokenizer library: the bundle carries the prompt
and option token ids (encoded here, in Python) and these bytes for decoding
generated ids (concatenate, then decode UTF-8 once).
"""

from __future__ import annotations

import json

from otaro_export.demo.toml_io import DemoConfigError


def _byte_alphabet() -> dict[str, int]:
    """GPT-2's reversible byte <-> printable-character map, as character -> byte."""
    printable = [
        *range(ord("!"), ord("~") + 1),
        *range(ord("\u00a1"), ord("\u00ac") + 1),
        *range(ord("\u00ae"), ord("\u00ff") + 1),
    ]
    chars, extra = {}, 0
    for b in range(256):
        if b in printable:
            chars[chr(b)] = b
        else:  # unprintable bytes map to code points from 256 up, in byte order
            chars[chr(256 + extra)] = b
            extra += 1
    return chars


def token_bytes_table(tokenizer) -> list[bytes]:
    """bytes of every token id (special tokens: empty, as decode(skip_special_tokens=True) drops them)."""
    backend = getattr(tokenizer, "backend_tokenizer", None)
    decoder = json.loads(backend.to_str()).get("decoder") if backend is not None else None
    if not decoder or decoder.get("type") != "ByteLevel":
        raise DemoConfigError(
            "mobile bundles support byte-level BPE tokenizers (Llama-3/SmolLM2/Qwen2 style) only; "
            f"this tokenizer's decoder is {decoder and decoder.get('type')!r}"
        )
    alphabet = _byte_alphabet()
    special = set(tokenizer.all_special_ids)
    table = []
    for i, piece in enumerate(tokenizer.convert_ids_to_tokens(list(range(len(tokenizer))))):
        if i in special or piece is None:
            table.append(b"")
        elif all(c in alphabet for c in piece):
            table.append(bytes(alphabet[c] for c in piece))
        else:  # an added non-byte-level token (plain text)
            table.append(piece.encode("utf-8"))
    return table
