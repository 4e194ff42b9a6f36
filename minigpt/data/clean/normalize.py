"""Cleaning's rewriting steps, in the order they run: POS tags (People's Daily only), HTML, URLs, then the
one text normalisation every other part of minigpt uses too (``minigpt.data.normalize.normalize``: width,
compatibility folding, control characters, Chinese punctuation), then whitespace. Each step is switched by
the CleanConfig field of the same name and counts, in ``steps``, the documents it changed (stats.json "steps").
"""

from __future__ import annotations

import html
import re

from .. import normalize as textnorm
from .. import sources as S
from .config import CleanConfig

_HTML_TAG_RE = re.compile(r"</?[A-Za-z][A-Za-z0-9]*(?:\s[^<>]{0,500})?/?>|<!--.*?-->", re.S)
_HTML_ENTITY_RE = re.compile(r"&(?:[A-Za-z]{2,8}|#\d{1,7}|#[xX][0-9A-Fa-f]{1,6});")
# ASCII-only URL body so a URL glued to Chinese text stops where the Chinese starts
_URL_RE = re.compile(r"(?:https?://|ftp://|www\.)[A-Za-z0-9\-._~:/?#\[\]@!$&'()*+,;=%]+", re.I)
_HSPACE_RE = re.compile(r"[^\S\n]{2,}|[^\S\n ]")
_NEWLINES_RE = re.compile(r" ?\n[ \n]*")
_BLOCK_TAGS = {"br", "p", "div", "li", "tr", "td", "th", "h1", "h2", "h3", "h4", "h5", "h6", "table", "ul", "ol"}
_NORMALIZE_STEPS = ("fullwidth_to_halfwidth", "nfkc", "strip_control", "cjk_punctuation")


def normalize_batch(texts: list[str], pos_tagged: list[bool], cfg: CleanConfig, steps: dict[str, int]) -> list[str]:
    """Every enabled cleaning step for each text, in order; ``pos_tagged[i]`` marks People's Daily lines."""
    if cfg.strip_pos_tags and any(pos_tagged):
        texts = _strip_pos_tags(texts, pos_tagged, steps)
    texts = [_markup(t, cfg, steps) for t in texts]
    switches = {k: getattr(cfg, k) for k in _NORMALIZE_STEPS}
    if texts and any(switches.values()):
        texts = textnorm.normalize(texts, counts=steps, **switches)
    if cfg.collapse_whitespace:
        texts = [_count_change(t, _collapse_whitespace(t), "collapse_whitespace", steps) for t in texts]
    return texts


def _strip_pos_tags(texts: list[str], pos_tagged: list[bool], steps: dict[str, int]) -> list[str]:
    texts = list(texts)
    for i, (t, tagged) in enumerate(zip(texts, pos_tagged)):
        if tagged:
            u = S.strip_pos_tags(t)
            if u != t:
                steps["strip_pos_tags"] += 1
                texts[i] = u
    return texts


def _markup(s: str, cfg: CleanConfig, steps: dict[str, int]) -> str:
    """HTML tags and entities, then URLs."""
    if cfg.remove_html and ("<" in s or "&" in s):
        s = _count_change(s, _remove_html(s), "remove_html", steps)
    if cfg.remove_urls and ("://" in s or "www." in s or "WWW." in s):
        s = _count_change(s, _URL_RE.sub("", s), "remove_urls", steps)
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


def _collapse_whitespace(s: str) -> str:
    """Runs of horizontal space -> one space, blank-line runs -> one blank line, ends stripped."""
    if ("  " in s or not s.replace("\n", " ").isprintable()) and _HSPACE_RE.search(s):
        s = _HSPACE_RE.sub(" ", s)
    if " \n" in s or "\n " in s or "\n\n" in s:
        s = _NEWLINES_RE.sub(_collapse_newlines, s)
    return s.strip()


def _collapse_newlines(m: re.Match) -> str:
    return "\n\n" if m.group().count("\n") > 1 else "\n"
