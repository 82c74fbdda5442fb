"""The beginning-of-sequence token of a GGUF model, read from the file's header.

utils.uid needs it for llama.cpp servers: llama-cpp-python only lines up echoed prompt tokens with
their log-probabilities when the prompt starts with the BOS token, and models such as SmolLM2 do not
add one by themselves. Reading the header directly (instead of loading the model through llama_cpp)
takes a fraction of a second and prints nothing.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from functools import lru_cache
from typing import Any, BinaryIO

# GGUF value type -> struct format of a scalar (8 = string, 9 = array are read separately).
_SCALARS = {0: "<B", 1: "<b", 2: "<H", 3: "<h", 4: "<I", 5: "<i", 6: "<f", 7: "<?", 10: "<Q", 11: "<q", 12: "<d"}
_STRING, _ARRAY = 8, 9
_WANTED = ("tokenizer.ggml.bos_token_id", "tokenizer.ggml.add_bos_token", "tokenizer.ggml.tokens",
           "tokenizer.ggml.model")


@dataclass(frozen=True)
class BosToken:
    text: str        # e.g. "<|im_start|>" for SmolLM2
    added_by_model: bool  # True: the tokenizer already puts it in front of every prompt


def _read(fh: BinaryIO, fmt: str) -> Any:
    size = struct.calcsize(fmt)
    data = fh.read(size)
    if len(data) != size:
        raise ValueError("truncated GGUF header")
    return struct.unpack(fmt, data)[0]


def _string(fh: BinaryIO) -> str:
    length = _read(fh, "<Q")
    return fh.read(length).decode("utf-8", errors="replace")


def _value(fh: BinaryIO, kind: int, keep: bool) -> Any:
    if kind in _SCALARS:
        return _read(fh, _SCALARS[kind])
    if kind == _STRING:
        return _string(fh)
    if kind == _ARRAY:
        item_kind, count = _read(fh, "<I"), _read(fh, "<Q")
        if not keep and item_kind in _SCALARS:  # skip without decoding
            fh.seek(count * struct.calcsize(_SCALARS[item_kind]), 1)
            return None
        items = [_value(fh, item_kind, keep) for _ in range(count)]
        return items if keep else None
    raise ValueError(f"unknown GGUF value type {kind}")


@lru_cache(maxsize=8)
def bos_token(model_path: str) -> BosToken | None:
    """The BOS token of a GGUF (v2/v3) file, or None if the file has none or cannot be read."""
    try:
        with open(model_path, "rb") as fh:
            if fh.read(4) != b"GGUF" or _read(fh, "<I") < 2:
                return None
            _read(fh, "<Q")  # tensor count
            found: dict[str, Any] = {}
            for _ in range(_read(fh, "<Q")):
                key = _string(fh)
                found_value = _value(fh, _read(fh, "<I"), keep=key in _WANTED)
                if key in _WANTED:
                    found[key] = found_value
                if len(found) == len(_WANTED):
                    break
    except (OSError, ValueError, struct.error, MemoryError):
        return None
    bos_id, tokens = found.get("tokenizer.ggml.bos_token_id"), found.get("tokenizer.ggml.tokens")
    if bos_id is None or not tokens or not 0 <= bos_id < len(tokens):
        return None
    # llama.cpp's default when the key is absent: SentencePiece ("llama") vocabularies add BOS.
    added = found.get("tokenizer.ggml.add_bos_token", found.get("tokenizer.ggml.model") == "llama")
    return BosToken(text=tokens[bos_id], added_by_model=bool(added))
