"""Text normalisation: the cleaning steps that rewrite a document, in the order they run.

POS tags (People's Daily only), full-width -> half-width, NFKC, HTML, URLs, control characters,
whitespace. Each step is switched by the CleanConfig field of the same name and counts, in
``steps``, the documents it changed (stats.json "steps").
"""

from __future__ import annotations

import html
import re
import unicodedata

import numpy as np

from .. import sources as S
from .chars import codepoints
from .config import CleanConfig

# C0/C1 controls except \t \n \r, zero-width and bidi format characters, BOM, surrogates
_CONTROL_RE = re.compile(
    "[\x00-\x08\x0b\x0c\x0e-\x1f\x7f-\x9f\u00ad\u200b-\u200f\u202a-\u202e\u2060-\u2064\u2066-\u206f"
    "\ufeff\ufff9-\ufffb\ud800-\udfff]+"
)
_HTML_TAG_RE = re.compile(r"</?[A-Za-z][A-Za-z0-9]*(?:\s[^<>]{0,500})?/?>|<!--.*?-->", re.S)
_HTML_ENTITY_RE = re.compile(r"&(?:[A-Za-z]{2,8}|#\d{1,7}|#[xX][0-9A-Fa-f]{1,6});")
# ASCII-only URL body so a URL glued to Chinese text stops where the Chinese starts
_URL_RE = re.compile(r"(?:https?://|ftp://|www\.)[A-Za-z0-9\-._~:/?#\[\]@!$&'()*+,;=%]+", re.I)
_HSPACE_RE = re.compile(r"[^\S\n]{2,}|[^\S\n ]")
_NEWLINES_RE = re.compile(r" ?\n[ \n]*")
_BLOCK_TAGS = {"br", "p", "div", "li", "tr", "td", "th", "h1", "h2", "h3", "h4", "h5", "h6", "table", "ul", "ol"}


def normalize_batch(texts: list[str], pos_tagged: list[bool], cfg: CleanConfig, steps: dict[str, int]) -> list[str]:
    """Every enabled cleaning step for each text, in order; ``pos_tagged[i]`` marks People's Daily lines."""
    if cfg.strip_pos_tags and any(pos_tagged):
        texts = _strip_pos_tags(texts, pos_tagged, steps)
    if cfg.fullwidth_to_halfwidth and texts:
        texts = _halfwidth(texts, steps)
    return [_normalize_rest(t, cfg, steps) for t in texts]


def _strip_pos_tags(texts: list[str], pos_tagged: list[bool], steps: dict[str, int]) -> list[str]:
    texts = list(texts)
    for i, (t, tagged) in enumerate(zip(texts, pos_tagged)):
        if tagged:
            u = S.strip_pos_tags(t)
            if u != t:
                steps["strip_pos_tags"] += 1
                texts[i] = u
    return texts


def _halfwidth(texts: list[str], steps: dict[str, int]) -> list[str]:
    """Full-width ASCII (U+FF01..FF5E) and the ideographic space -> ASCII, over the whole batch with
    numpy: per string, both a regex and str.translate cost more than every other step together."""
    cp, lens, starts = codepoints(texts)
    hit = ((cp >= 0xFF01) & (cp <= 0xFF5E)) | (cp == 0x3000)
    if not hit.any():
        return texts
    cp = np.where(hit, np.where(cp == 0x3000, 0x20, cp - 0xFEE0), cp).astype(np.uint32)
    changed = np.bincount(np.repeat(np.arange(len(texts)), lens), weights=hit, minlength=len(texts)) > 0
    steps["fullwidth_to_halfwidth"] += int(changed.sum())
    joined = cp.tobytes().decode("utf-32-le", "surrogatepass")  # 1:1 mapping: lengths unchanged
    return [joined[s0:s0 + n] if c else t
            for t, s0, n, c in zip(texts, starts.tolist(), lens.tolist(), changed.tolist())]


def _normalize_rest(s: str, cfg: CleanConfig, steps: dict[str, int]) -> str:
    """NFKC, HTML, URLs, control characters and whitespace for one string."""
    # is_normalized is a quick check; the full NFKC pass is slow, so it runs only when needed
    if cfg.nfkc and not unicodedata.is_normalized("NFKC", s):
        steps["nfkc"] += 1
        s = unicodedata.normalize("NFKC", s)
    if cfg.remove_html and ("<" in s or "&" in s):
        s = _count_change(s, _remove_html(s), "remove_html", steps)
    if cfg.remove_urls and ("://" in s or "www." in s or "WWW." in s):
        s = _count_change(s, _URL_RE.sub("", s), "remove_urls", steps)
    # isprintable() is a fast C scan that is False for every control, format or non-space
    # whitespace character; newlines aside, most documents are printable and skip the regexes
    odd = not s.isprintable() and not s.replace("\n", " ").isprintable()
    if cfg.strip_control and odd and _CONTROL_RE.search(s):
        s = _CONTROL_RE.sub("", s)
        steps["strip_control"] += 1
    if cfg.collapse_whitespace:
        s = _count_change(s, _collapse_whitespace(s, odd), "collapse_whitespace", steps)
    return s


def _count_change(old: str, new: str, step: str, steps: dict[str, int]) -> str:
    if new != old:
        steps[step] += 1
    return new


def _remove_html(s: str) -> str:
    """Block tags become line breaks, inline ones vanish (a space would split Chinese words); entities are decoded."""
    t = _HTML_TAG_RE.sub(_html_tag, s)
    if "&" in t:
        t = _HTML_ENTITY_RE.sub(lambda m: html.unescape(m.group()), t)
    return t


def _html_tag(m: re.Match) -> str:
    name = re.match(r"</?([A-Za-z0-9]*)", m.group())
    return "\n" if name and name.group(1).lower() in _BLOCK_TAGS else ""


def _collapse_whitespace(s: str, odd: bool) -> str:
    """Runs of horizontal space -> one space, blank-line runs -> one blank line, ends stripped."""
    if ("  " in s or odd) and _HSPACE_RE.search(s):
        s = _HSPACE_RE.sub(" ", s)
    if " \n" in s or "\n " in s or "\n\n" in s:
        s = _NEWLINES_RE.sub(_collapse_newlines, s)
    return s.strip()


def _collapse_newlines(m: re.Match) -> str:
    return "\n\n" if m.group().count("\n") > 1 else "\n"
