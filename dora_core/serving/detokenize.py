"""Incremental detokenisation: the text a stream may show after each generated token.

Each step decodes the generated ids and emits what is new, but holds back a tail that may still
change or must not be shown: an incomplete UTF-8 character (decoded as U+FFFD until its last byte
arrives) and any tail that could be the start of a stop string. A stop string ends the text just
before it.

Decoding the whole list every step would cost O(n) per token. Instead the text of the ids up to an
anchor (the last point where the text ended on a whole character) is kept, and only the ids after
it are decoded, with a few ids before it as context (a SentencePiece word's leading space and a
tokenizer's space clean-up depend on the neighbours) whose own text is then cut off (vLLM's way).
When the context's text is not a prefix of the window's, the whole list is decoded.
"""

from __future__ import annotations

from functools import cache
from typing import Any

REPLACEMENT = "\ufffd"
CONTEXT_TOKENS = 6  # ids decoded before the anchor, for the neighbours' sake


class IncrementalText:
    """The text of one completion, emitted piece by piece."""

    def __init__(self, tokenizer: Any, stop: tuple[str, ...]) -> None:
        self.tokenizer = tokenizer
        self.stop = tuple(s for s in stop if s)
        self.ids: list[int] = []
        self.emitted = 0  # characters of the decoded text already emitted
        self.anchor = 0  # ids[:anchor] decode to anchor_text, which ends on a whole character
        self.anchor_text = ""
        self.context_text = ""  # the text of ids[anchor - CONTEXT_TOKENS:anchor]

    def add(self, token_id: int) -> tuple[str, bool]:
        """(new text that is safe to emit, whether a stop string was reached)."""
        self.ids.append(token_id)
        text = self._decode()
        stop_at = min((i for s in self.stop if (i := text.find(s, self.emitted)) >= 0), default=-1)
        if stop_at >= 0:
            return self._advance(text, stop_at), True
        end = len(text)
        while end > self.emitted and text[end - 1] == REPLACEMENT:
            end -= 1
        end -= max((k for s in self.stop for k in range(1, len(s)) if text[:end].endswith(s[:k])), default=0)
        return self._advance(text, max(end, self.emitted)), False

    def flush(self) -> str:
        """Everything not yet emitted (the completion ended without a stop string)."""
        text = self._decode()
        return self._advance(text, len(text))

    def _advance(self, text: str, end: int) -> str:
        delta, self.emitted = text[self.emitted:end], end
        return delta

    def _decode(self) -> str:
        start = max(0, self.anchor - CONTEXT_TOKENS)
        window = self._decode_ids(self.ids[start:])
        if window.startswith(self.context_text):
            text = self.anchor_text + window[len(self.context_text):]
        else:
            text = self._decode_ids(self.ids)
        if not text.endswith(REPLACEMENT) and len(self.ids) > self.anchor:
            self.anchor, self.anchor_text = len(self.ids), text
            self.context_text = self._decode_ids(self.ids[max(0, self.anchor - CONTEXT_TOKENS):])
        return text

    def _decode_ids(self, ids: list[int]) -> str:
        return self.tokenizer.decode(ids, skip_special_tokens=True)


@cache
def _byte_decoder() -> dict[str, int]:
    """GPT-2's byte-level alphabet (printable stand-ins for the 256 bytes), reversed."""
    kept = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), 256))
    shifted, extra = [], 0
    for byte in range(256):
        if byte not in kept:
            shifted.append((byte, 256 + extra))
            extra += 1
    mapping = {chr(b): b for b in kept} | {chr(c): b for b, c in shifted}
    return mapping


class TokenTexts:
    """A token's own text and its exact bytes (a byte-level BPE token may hold part of a character),
    cached per tokenizer: logprobs name each token this way."""

    def __init__(self, tokenizer: Any) -> None:
        self.tokenizer = tokenizer
        self._known: dict[int, tuple[str, bytes]] = {}

    def __call__(self, token_id: int) -> tuple[str, bytes]:
        if token_id not in self._known:
            self._known[token_id] = self._look_up(token_id)
        return self._known[token_id]

    def _look_up(self, token_id: int) -> tuple[str, bytes]:
        text = self.tokenizer.decode([token_id], skip_special_tokens=False)
        if REPLACEMENT not in text:
            return text, text.encode("utf-8")
        piece = self.tokenizer.convert_ids_to_tokens(token_id)  # a partial character: read the token's spelling
        decoder = _byte_decoder()
        if isinstance(piece, str) and piece and all(ch in decoder for ch in piece):
            return text, bytes(decoder[ch] for ch in piece)
        if isinstance(piece, str) and len(piece) == 6 and piece.startswith("<0x") and piece.endswith(">"):
            return text, bytes([int(piece[3:5], 16)])  # SentencePiece byte fallback
        return text, text.encode("utf-8")
