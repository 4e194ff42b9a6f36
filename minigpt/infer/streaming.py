"""Streaming text for one generated row: UTF-8 safe, stop tokens and stop strings, hold-back.

Tokens arrive one at a time; a byte-level token may be a fragment of a multi-byte character, and the
end of the text may be the start of a stop string. `RowText.pending()` hands out only text that can
no longer change, so a stream never shows half a character or part of a stop string.
"""
from __future__ import annotations

import codecs
from typing import Any, Sequence


class RowText:
    """Turns one row's token ids into text: UTF-8 safe, stop tokens and stop strings applied.

    `pending()` returns text that is final (complete characters, and no tail that could still turn
    out to be the start of a stop string); `text` is everything decided so far.
    """

    def __init__(self, tokenizer: Any, stop_ids: set[int], stop_strings: Sequence[str], special_ids: set[int],
                 skip_special: bool) -> None:
        self.tok = tokenizer
        self.stop_ids = stop_ids
        self.stop_strings = list(stop_strings)
        self.special_ids = special_ids
        self.skip_special = skip_special
        self.ids: list[int] = []
        self.done = False
        self.stop_reason = ""
        self.text = ""  # decoded complete characters (cut at a stop string once found)
        self._emitted = 0
        self._search_from = 0
        self._maxstop = max((len(s) for s in self.stop_strings), default=0)
        self._has_bytes = hasattr(tokenizer, "token_bytes")
        # An incremental decoder keeps an unfinished multi-byte character back until its last byte arrives.
        self._utf8 = codecs.getincrementaldecoder("utf-8")(errors="replace")
        self._text_ids: list[int] = []

    def _piece(self, tok: int) -> str:
        if tok in self.special_ids and self.skip_special:
            return ""
        if self._has_bytes:
            try:
                data = self.tok.token_bytes(tok)
            except (IndexError, KeyError):  # an id the model knows but the tokenizer does not
                data = b"\xef\xbf\xbd"
            return self._utf8.decode(data, final=False)
        # Generic tokenizer: decode all text ids, hold back a trailing U+FFFD (an incomplete character).
        self._text_ids.append(tok)
        full = self.tok.decode(self._text_ids, skip_special_tokens=self.skip_special)
        while full.endswith("\ufffd"):
            full = full[:-1]
        return full[len(self.text):] if full.startswith(self.text) else ""

    def push(self, tok: int) -> bool:
        """Add one generated id; True when the row is finished."""
        self.ids.append(tok)
        if tok in self.stop_ids:
            self.done, self.stop_reason = True, "stop_token"
            self._flush()
            return True
        piece = self._piece(tok)
        if piece:
            self.text += piece
            if self.stop_strings:
                self._check_stop()
        return self.done

    def _flush(self) -> None:
        # An unfinished multi-byte character at the end (max_new_tokens hit mid-character) is dropped,
        # not shown as U+FFFD: half a character is never emitted, in a stream or in the final text.
        if self._has_bytes:
            self._utf8.reset()

    def _check_stop(self) -> None:
        start = max(0, self._search_from - self._maxstop + 1)
        hits = [i for i in (self.text.find(s, start) for s in self.stop_strings) if i >= 0]
        if hits:
            self.text = self.text[:min(hits)]
            self.done, self.stop_reason = True, "stop_string"
        self._search_from = len(self.text)

    def finish(self, reason: str) -> None:
        """End the row for `reason` (e.g. "max_new_tokens") unless a stop ended it first."""
        if not self.done:
            self.done, self.stop_reason = True, reason
            self._flush()

    def _holdback(self) -> int:
        """Length of the longest tail of text that is a proper prefix of a stop string."""
        if self.done or not self.stop_strings:
            return 0
        t = self.text
        for n in range(min(self._maxstop - 1, len(t)), 0, -1):
            tail = t[-n:]
            if any(s.startswith(tail) for s in self.stop_strings):
                return n
        return 0

    def pending(self) -> str:
        """The text that became final since the last call."""
        end = len(self.text) - self._holdback()
        if end <= self._emitted:
            return ""
        out = self.text[self._emitted:end]
        self._emitted = end
        return out
