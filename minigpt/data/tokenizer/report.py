"""How good a tokenizer is on given texts (round trip, compression, vocab use), and token boundaries
rendered as text or HTML for the notebook."""

from __future__ import annotations

import html
import logging
import re
import unicodedata
from collections import Counter
from typing import Sequence

from .minitokenizer import MiniTokenizer
from .special import SPECIAL_TOKENS

logger = logging.getLogger(__name__)

_ZH = re.compile(r"[\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff\u3000-\u303f\uff00-\uffef]+")
_EN = re.compile(r"[A-Za-z][A-Za-z0-9'’\-]*(?:[ ,.;:!?]+[A-Za-z][A-Za-z0-9'’\-]*)*[.,;:!?]?")


def _script_runs(texts: Sequence[str], pattern: re.Pattern) -> list[str]:
    return [m.group(0) for t in texts for m in pattern.finditer(t)]


def token_pieces(tok: MiniTokenizer, text: str) -> list[tuple[str, int]]:
    """Split ``text`` at token boundaries as (piece, n_tokens).

    A token that ends inside a multi-byte UTF-8 character is joined with the following
    token(s) until the bytes decode, so every piece is real text (n_tokens > 1 then).
    """
    out: list[tuple[str, int]] = []
    buf, n = b"", 0
    for i in tok.encode(text):
        buf += tok.token_bytes(i)
        n += 1
        try:
            s = buf.decode("utf-8")
        except UnicodeDecodeError:
            continue
        out.append((s, n))
        buf, n = b"", 0
    if buf:
        out.append((buf.decode("utf-8", errors="replace"), n))
    return out


def render_tokens_text(tok: MiniTokenizer, text: str, sep: str = "|") -> str:
    """Token boundaries as plain text, e.g. ``迈向|充满|希望``; control chars shown escaped."""
    return sep.join(_visible(p) for p, _ in token_pieces(tok, text))


def _visible(s: str) -> str:
    return "".join(c if not unicodedata.category(c).startswith("C") else repr(c)[1:-1] for c in s)


def render_tokens_html(tok: MiniTokenizer, text: str) -> str:
    """Token boundaries as HTML (alternating backgrounds) for ``IPython.display.HTML``."""
    colors = ("#fde2a7", "#b9e4f7", "#d5f5c8", "#f7c9e3")
    spans = []
    for k, (p, n) in enumerate(token_pieces(tok, text)):
        title = f"{n} tokens (split UTF-8 char)" if n > 1 else "1 token"
        spans.append(
            f'<span title="{title}" style="background:{colors[k % len(colors)]};'
            f'border-radius:2px;padding:0 1px;white-space:pre-wrap">{html.escape(_visible(p))}</span>'
        )
    return '<div style="font-family:monospace;line-height:1.8">' + "".join(spans) + "</div>"


def quality_report(tok: MiniTokenizer, texts: list[str], n_examples: int = 3, top_k: int = 20) -> dict:
    """Round trip, compression (overall / Chinese / English), vocab usage, longest tokens,
    comparison with a character-level tokenizer, and rendered examples. JSON-able."""
    texts = [t for t in texts if t]
    enc = tok.encode_batch(texts)
    failures = [k for k, (t, ids) in enumerate(zip(texts, enc)) if tok.decode(ids) != t]
    n_chars = sum(len(t) for t in texts)
    n_bytes = sum(len(t.encode("utf-8")) for t in texts)
    n_tokens = sum(len(e) for e in enc)

    def cpt(runs: list[str]) -> dict:
        ids = tok.encode_batch(runs) if runs else []
        c, n = sum(map(len, runs)), sum(map(len, ids))
        return {"chars": c, "tokens": n, "chars_per_token": (c / n) if n else None}

    counts: Counter = Counter()
    for e in enc:
        counts.update(e)
    normal = [i for i in range(len(SPECIAL_TOKENS), tok.vocab_size)]
    used = sum(1 for i in normal if counts[i])
    longest = sorted(normal, key=lambda i: (-len(tok.token_bytes(i)), i))[:top_k]
    distinct_chars = len(set("".join(texts)))
    report = {
        "n_docs": len(texts),
        "n_chars": n_chars,
        "n_bytes": n_bytes,
        "n_tokens": n_tokens,
        # decode(encode(x)) == x on every text; first_failure is an index into texts
        "round_trip": {"checked": len(texts), "failures": len(failures), "ok": not failures,
                       "first_failure": failures[0] if failures else None},
        "roundtrip_ok": not failures,
        "chars_per_token": n_chars / n_tokens if n_tokens else None,
        "bytes_per_token": n_bytes / n_tokens if n_tokens else None,
        "chinese": cpt(_script_runs(texts, _ZH)),  # CJK runs encoded on their own
        "english": cpt(_script_runs(texts, _EN)),  # Latin-word runs encoded on their own
        "vocab_size": tok.vocab_size,
        "vocab_used": used,
        "vocab_used_frac": used / len(normal) if normal else 0.0,
        "top_tokens": [{"id": i, "token": tok.token_str(i), "count": c} for i, c in counts.most_common(top_k)],
        "longest_tokens": [{"id": i, "token": tok.token_str(i), "bytes": len(tok.token_bytes(i))} for i in longest],
        "char_level": {
            # a character-level tokenizer needs one id per distinct character and one token per char
            "vocab_needed": distinct_chars,
            "tokens": n_chars,
            "bpe_tokens": n_tokens,
            "compression_vs_char": n_chars / n_tokens if n_tokens else None,
        },
        "examples": [
            {"text": t[:200], "tokens": render_tokens_text(tok, t[:200])} for t in texts[:n_examples]
        ],
    }
    if failures:
        logger.warning("round trip failed on %d of %d texts (first: #%d)", len(failures), len(texts), failures[0])
    return report


def quality_tables(report: dict) -> dict:
    """pandas DataFrames of a ``quality_report`` for the notebook."""
    import pandas as pd

    summary = pd.DataFrame(
        [
            ("documents", report["n_docs"]),
            ("characters", report["n_chars"]),
            ("tokens", report["n_tokens"]),
            ("round trip exact", f"{report['round_trip']['checked'] - report['round_trip']['failures']} / {report['round_trip']['checked']}"),
            ("chars / token (all)", report["chars_per_token"]),
            ("chars / token (Chinese)", report["chinese"]["chars_per_token"]),
            ("chars / token (English)", report["english"]["chars_per_token"]),
            ("vocab used", f"{report['vocab_used']} / {report['vocab_size'] - len(SPECIAL_TOKENS)}"),
        ],
        columns=["metric", "value"],
    )
    cl = report["char_level"]
    compare = pd.DataFrame(
        [
            {"encoding": "character-level", "vocab": cl["vocab_needed"], "tokens": cl["tokens"], "chars/token": 1.0},
            {"encoding": "byte-level BPE", "vocab": report["vocab_size"], "tokens": cl["bpe_tokens"], "chars/token": cl["compression_vs_char"]},
        ]
    )
    return {
        "summary": summary,
        "char_level": compare,
        "longest_tokens": pd.DataFrame(report["longest_tokens"]),
        "top_tokens": pd.DataFrame(report["top_tokens"]),
    }
