"""One text normalisation for everything the model reads: cleaning, tokenizer training, chat data, prompts.

    from minigpt.data.normalize import normalize
    normalize("ＡＢＣ１２３，测试！")          # -> "ABC123，测试！"
    normalize(["12月31日,中共", "你好?"])     # -> ["12月31日，中共", "你好？"]  (a list in, a list out)

Version 2 (``NORMALIZE_VERSION``), in order:

1. width: full-width letters, digits and symbols (U+FF01..FF5E) become ASCII and the ideographic space
   U+3000 a space, *except* the punctuation Chinese is written with, which stays full-width:
   ``，！？：；（）［］～`` (``PROTECTED``). ``、。《》“”‘’「」…—`` are not full-width forms and stay as well.
2. compatibility: the NFKC folding (ligatures, circled and super-/subscript digits, CJK compatibility
   ideographs, composed accents) for everything except the protected punctuation and the ellipsis ``…``
   (NFKC would make it ``...``).
3. control: C0/C1 controls except tab, newline and carriage return, zero-width and bidi format characters,
   the BOM, lone surrogates and the noncharacters U+FDD0..FDEF, U+FFFE, U+FFFF are removed.
4. Chinese punctuation: ASCII ``,`` and ``;`` between two Chinese characters (Han or kana, or a closing
   mark before and an opening mark after; spaces after the mark dropped), and ASCII ``! ? . :`` after a
   Chinese character (or closing mark) and before a Chinese character, an opening mark, a space or the end
   of the text become ``，；！？。：``. So ``12月31日,中共`` reads ``12月31日，中共`` and ``你好?``
   reads ``你好？``: Chinese text has one comma, whichever keyboard typed it. ASCII marks next to a Latin
   letter or a digit (``3.5``, ``Windows 98,``, ``中国(China)``) and parentheses are left alone.

Version 1 is what runs before versions were recorded did: NFKC everywhere (full-width punctuation became
ASCII), and the same control characters removed. ``normalize(text, version=1)`` reproduces it, so a
model trained on version-1 data gets prompts in the form it was trained on.

Version 0 is no normalisation at all: a tokenizer imported with a pretrained model (``python -m
minigpt.convert``) was trained on raw text, so its tokenizer_config.json records 0 and prompts reach it as typed.

``normalize`` is idempotent. Cleaning (notebook 01) adds document-level steps around it (POS tags, HTML,
URLs, whitespace) that prompts do not get; see ``minigpt.data.clean``.
"""

from __future__ import annotations

import logging
import re
import unicodedata
from typing import Sequence, overload

import numpy as np

logger = logging.getLogger(__name__)

NORMALIZE_VERSION = 2
VERSION_KEY = "normalize_version"  # the key in stats.json, meta.json and tokenizer_config.json
VERSIONS = {
    0: "none: text is used as it is (tokenizers imported with a pretrained model were trained on raw text)",
    1: "NFKC (full-width punctuation became ASCII); runs that recorded no version",
    2: "Chinese punctuation kept full-width, letters and digits half-width, compatibility folded",
}
# full-width punctuation that Chinese text is written with: kept as it is
PROTECTED = "，！？：；（）［］～"
_KEEP = frozenset(PROTECTED + "\u2026")
_SUBSTEPS = ("fullwidth_to_halfwidth", "nfkc", "strip_control", "cjk_punctuation")

# C0/C1 controls except \t \n \r, zero-width and bidi format characters, BOM, surrogates, noncharacters
_CONTROL_RE = re.compile(
    "[\x00-\x08\x0b\x0c\x0e-\x1f\x7f-\x9f\u00ad\u200b-\u200f\u202a-\u202e\u2060-\u2064\u2066-\u206f"
    "\ufeff\ufff9-\ufffb\ud800-\udfff\ufdd0-\ufdef\ufffe\uffff]+"
)
_HAN = "\u3040-\u30ff\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff\U00020000-\U0002ffff"
_LEFT = _HAN + "\u201d\u2019\u300b\u300d\u300f\u3011\uff09"  # a Chinese character or a closing mark ”’》」』】）
_RIGHT = _HAN + "\u201c\u2018\u300a\u300c\u300e\u3010\uff08"  # a Chinese character or an opening mark “‘《「『【（
# The mark comes first and the look-behind after it (checking the character before the mark): a pattern that
# starts with a character set lets the regex engine skip to candidate marks instead of trying every position.
_PAIR_RE = re.compile(f"([,;])(?<=[{_LEFT}][,;]) *(?=[{_RIGHT}])")
_END_RE = re.compile(f"([!?.:])(?<=[{_LEFT}][!?.:])(?=[{_RIGHT}\\s]|$)")
_TO_FULL = {",": "，", ";": "；", ":": "：", "!": "！", "?": "？", ".": "。"}
_STABLE: dict[bool, np.ndarray] = {}


def _stable_table(keep: bool) -> np.ndarray:
    """True for BMP code points that NFKC leaves alone in any context (checked once per character): ASCII
    and the blocks Chinese text is made of (with ``keep``, the protected punctuation counts as stable).
    A text with any other character gets the full NFKC pass."""
    if keep not in _STABLE:
        t = np.zeros(0x10000, dtype=bool)
        for lo, hi in [(0x20, 0x7E), (0x2010, 0x2027), (0x2030, 0x205E), (0x3000, 0x30FF), (0x3400, 0x4DBF),
                       (0x4E00, 0x9FFF), (0xAC00, 0xD7A3), (0xFF01, 0xFF5E)]:
            for c in range(lo, hi + 1):
                ch = chr(c)
                same = (keep and ch in _KEEP) or unicodedata.normalize("NFKC", ch) == ch
                t[c] = same and not unicodedata.combining(ch)
        t[[0x09, 0x0A, 0x0D]] = True
        _STABLE[keep] = t
    return _STABLE[keep]


def _codepoints(texts: Sequence[str]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    lens = np.fromiter((len(t) for t in texts), dtype=np.int64, count=len(texts))
    cp = np.frombuffer("".join(texts).encode("utf-32-le", "surrogatepass"), dtype=np.uint32)
    return cp, lens, np.cumsum(lens) - lens


def _per_text(flags: np.ndarray, lens: np.ndarray) -> np.ndarray:
    """Any flag set within each text."""
    n = len(lens)
    return np.bincount(np.repeat(np.arange(n), lens), weights=flags, minlength=n) > 0


def _fold_width(texts: list[str], counts: dict[str, int], keep: bool, fold: bool) -> tuple[list[str], np.ndarray]:
    """Full-width ASCII forms and U+3000 -> ASCII over the whole batch (numpy, lengths unchanged) when
    ``fold``; also returns, per text, whether NFKC may still change it."""
    cp, lens, starts = _codepoints(texts)
    hit = (((cp >= 0xFF01) & (cp <= 0xFF5E)) | (cp == 0x3000)) if fold else np.zeros(cp.shape, dtype=bool)
    if keep and hit.any():
        hit &= ~np.isin(cp, np.fromiter(map(ord, PROTECTED), dtype=np.uint32))
    changed = _per_text(hit, lens) if hit.any() else None
    if changed is not None:
        cp = np.where(hit, np.where(cp == 0x3000, 0x20, cp - 0xFEE0), cp).astype(np.uint32)
        counts["fullwidth_to_halfwidth"] += int(changed.sum())
    unstable = cp >= 0x10000
    unstable[~unstable] = ~_stable_table(keep)[cp[~unstable]]
    needs_nfkc = _per_text(unstable, lens)
    if changed is None:
        return texts, needs_nfkc
    joined = cp.tobytes().decode("utf-32-le", "surrogatepass")
    return [joined[s0:s0 + n] if c else t
            for t, s0, n, c in zip(texts, starts.tolist(), lens.tolist(), changed.tolist())], needs_nfkc


def _nfkc_keeping(s: str) -> str:
    """NFKC of everything between the protected characters, which stay as they are."""
    if not any(c in _KEEP for c in s):
        return unicodedata.normalize("NFKC", s)
    parts = re.split(f"([{re.escape(''.join(sorted(_KEEP)))}])", s)
    return "".join(p if p in _KEEP else unicodedata.normalize("NFKC", p) for p in parts)


def _cjk_punct(s: str) -> str:
    s = _PAIR_RE.sub(lambda m: _TO_FULL[m.group(1)], s)
    return _END_RE.sub(lambda m: _TO_FULL[m.group(1)], s)


def _one(s: str, nfkc_needed: bool, version: int, counts: dict[str, int], on: dict[str, bool]) -> str:
    """Steps 2-4 for one text (step 1 ran over the batch)."""
    if on["nfkc"] and nfkc_needed:
        t = _nfkc_keeping(s) if version >= 2 else unicodedata.normalize("NFKC", s)
        if t != s:
            counts["nfkc"] += 1
            s = t
    # isprintable() is a fast C scan, False for every control or format character (and for newlines, which
    # are removed from the copy it scans: most multi-line documents then need no regex search)
    if on["strip_control"] and not s.isprintable() and not s.replace("\n", "").isprintable() \
            and _CONTROL_RE.search(s):
        s = _CONTROL_RE.sub("", s)
        counts["strip_control"] += 1
    if version >= 2 and on["cjk_punctuation"] and not s.isascii() and any(c in s for c in ",;:!?."):
        t = _cjk_punct(s)
        if t != s:
            counts["cjk_punctuation"] += 1
            s = t
    return s


@overload
def normalize(text: str, *, version: int = ..., counts: dict[str, int] | None = ..., **steps: bool) -> str: ...
@overload
def normalize(text: Sequence[str], *, version: int = ..., counts: dict[str, int] | None = ...,
              **steps: bool) -> list[str]: ...


def normalize(text, *, version: int = NORMALIZE_VERSION, counts: dict[str, int] | None = None, **steps: bool):
    """The normal form of a text (a string) or of many (a list, normalised together, which is faster).

    version: 2 (the default) or 1 (the NFKC of runs before versions were recorded); see the module
    docstring. counts: if given, each step adds the number of texts it changed
    (``fullwidth_to_halfwidth``, ``nfkc``, ``strip_control``, ``cjk_punctuation``). A step can be switched
    off by name (``nfkc=False``): the cleaning notebook's switches; every other caller keeps them all on.
    """
    if version not in VERSIONS:
        raise ValueError(f"normalize: version {version!r} is unknown; expected one of {sorted(VERSIONS)}")
    if version == 0:  # an imported tokenizer's text is not normalised
        return text if isinstance(text, str) else list(text)
    bad = set(steps) - set(_SUBSTEPS)
    if bad:
        raise TypeError(f"normalize: unknown step {sorted(bad)[0]!r}; the steps are {', '.join(_SUBSTEPS)}")
    one = isinstance(text, str)
    texts = [text] if one else list(text)
    on = {k: bool(steps.get(k, True)) for k in _SUBSTEPS}
    tally = {k: 0 for k in _SUBSTEPS}
    needs = np.zeros(0, dtype=bool)
    if texts:
        texts, needs = _fold_width(texts, tally, keep=version >= 2, fold=on["fullwidth_to_halfwidth"])
    out = [_one(t, n, version, tally, on) for t, n in zip(texts, needs.tolist())]
    if counts is not None:
        for k, v in tally.items():
            counts[k] = counts.get(k, 0) + v
    return out[0] if one else out


def version_of(record: dict | None) -> int:
    """The normalisation version a stats.json / meta.json / tokenizer config records; 1 when it records none."""
    v = (record or {}).get(VERSION_KEY)
    return int(v) if isinstance(v, int) and v in VERSIONS else 1


def describe(version: int) -> str:
    return f"version {version} ({VERSIONS.get(version, 'unknown')})"


def check_same_version(tokenizer_version: int, data_version: int, tokenizer_where: str, data_where: str) -> bool:
    """Warn (naming both) when a tokenizer and the data it encodes were normalised differently; True if they agree."""
    if tokenizer_version == data_version:
        return True
    logger.warning(
        "text normalisation differs: the tokenizer %s was trained on text of normalisation %s, but %s is "
        "normalisation %s. Tokens of characters the tokenizer never saw fall back to bytes; re-run "
        "notebooks/01_data_clean and notebooks/02_tokenizer with retrain_tokenizer=True to make them agree.",
        tokenizer_where, describe(tokenizer_version), data_where, describe(data_version))
    return False
