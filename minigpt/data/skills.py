"""Built-in problems with checkable answers ("skills"): generators, splits and checkers, in one place.

    items = make_skills("train", n_per_family=500, seed=0, lang="zh", families=["add"])     # list[SkillItem]
    items[0].conversation()   # [{"role": "user", "content": "23加45等于多少？"}, {"role": "assistant", "content": "68"}]
    check_answer("add", "答案是 68。", "68")   # True  (the checker of evaluation and of the RL reward)
    write_skills_jsonl(items, "runs/demo/data/skills/train.jsonl")             # MiniMind chat JSONL

Every family is a ``SkillFamily`` in ``FAMILIES`` (ordered easy -> hard): a generator ``(rng, lang) -> (question,
answer)``, a checker ``(completion, answer) -> bool`` and a parser that reads the question's payload (its numbers
and strings) back, so ``split_of`` can place any question without knowing how it was drawn. Adding a family is one
``_family(...)`` entry in ``_build_families`` (see docs/skills.md).

Splits. A problem's *canonical key* is its family plus its payload, the same for the Chinese and the English
wording (``23×4`` in zh and en is one problem) and, where the operation commutes (add, compare, mul,
word-problem sums), the same for both orders (``3+5`` and ``5+3``). The key alone decides the split, so an
English test problem's Chinese twin, or its swapped twin, never lands in train:

- families with an enumerable problem space (``space``: dates and offsets, numbers 0-999, 1-2 digit sums,
  products with a one-digit factor, word problems) sort all their canonical keys by SHA-256 and give the first 10%
  to test, the next 10% to val, the rest to train (at least one key each), so the splits are disjoint, non-empty
  and exactly sized however small the space;
- the others (copy, reverse, count_char, 3-digit sums: spaces too large to enumerate) take SHA-256 of the key mod 10:
  0 -> test, 1 -> val, else train.

``make_skills`` never repeats a problem (same payload in the same order) within a val or test list; a family whose
split has fewer distinct problems than asked returns all it has (``split_sizes``). Train lists are filled to
``n_per_family`` by repeating their distinct problems (with fresh wording) when the split has too few, as epochs
would.

Checking (``extract_answer`` / ``normalize_answer``): the text after the last answer marker ("答案是", "答案：",
"the answer is", ...) if there is one, else the last non-empty line, with full-width forms folded (NFKC). Numeric
families compare the *last* number there (ASCII digits, ``1,000`` grouping, or a Chinese numeral such as ``八``),
so "答案是 8。", "8 个" and "The answer is 8." are right and "8 或 9" for 8 is wrong. ``num_to_zh`` wants a Chinese
numeral (digits are wrong; 两百 == 二百, 一十五 == 十五), ``zh_to_num`` wants ASCII digits. Dates: the
last month and day named count, 4月1日 == 4月1号 == 四月一日 and April 1 == Apr 1 == 1 April (case-insensitive).
Strings (copy, reverse) compare after stripping spaces and punctuation and folding case.
"""

from __future__ import annotations

import hashlib
import json
import logging
import random
import re
import unicodedata
from dataclasses import dataclass, field, replace
from functools import lru_cache, partial
from pathlib import Path
from typing import Callable, Iterable, Sequence

from ..atomic import atomic_write_text
from .jsonl import INVALID_UTF8, iter_json_lines

logger = logging.getLogger(__name__)

SPLITS = ("train", "val", "test")
LANGS = ("zh", "en")
Payload = tuple  # a problem's numbers and strings, language-independent

# ---------------------------------------------------------------------------------------------------------------
# Chinese numerals

_CN_DIGITS = "零一二三四五六七八九"
_CN_DIGIT_VALUE = {c: i for i, c in enumerate(_CN_DIGITS)} | {"〇": 0, "两": 2}
_CN_SMALL_UNITS = {"十": 10, "百": 100, "千": 1000}
_CN_CHARS = "零〇一二两三四五六七八九十百千万亿"
_CN_RUN = re.compile(f"[{_CN_CHARS}]+")


def _section(n: int) -> str:
    """0 < n < 10000 in Chinese, zeros inside written once as 零 (1005 -> 一千零五), none at the end."""
    out, zero = [], False
    for unit, name in ((1000, "千"), (100, "百"), (10, "十"), (1, "")):
        d = n // unit % 10
        if d == 0:
            zero = bool(out)
            continue
        if zero:
            out.append("零")
            zero = False
        out.append(_CN_DIGITS[d] + name)
    return "".join(out)


def to_chinese_numeral(n: int) -> str:
    """0 <= n < 10**12 as a Chinese numeral: 0 -> 零, 12 -> 十二, 20 -> 二十, 110 -> 一百一十, 10005 -> 一万零五."""
    if not isinstance(n, int) or isinstance(n, bool) or n < 0 or n >= 10**12:
        raise ValueError(f"to_chinese_numeral: expected an int in [0, 10**12), got {n!r}")
    if n == 0:
        return "零"
    parts, higher = [], False
    for big, name in ((10**8, "亿"), (10**4, "万"), (1, "")):
        sec = n // big % 10000
        if sec == 0:
            continue
        if higher and sec < 1000:  # a gap below a higher section reads 零: 一万零五, 十万零一十
            parts.append("零")
        parts.append(_section(sec) + name)
        higher = True
    text = "".join(parts)
    # 10-19 at the very start read 十, 十一 ... (not 一十); inside a number 一十 stays (一百一十)
    return text[1:] if text.startswith("一十") else text


def _parse_numeral(s: str) -> int | None:
    """A lenient reading of a Chinese numeral's value; from_chinese_numeral checks the form."""
    total, section, digit = 0, 0, None
    for ch in s:
        if ch in ("零", "〇"):
            digit = None
        elif ch in _CN_DIGIT_VALUE:
            if digit is not None:
                return None  # two digits in a row (三五): not a numeral of this form
            digit = _CN_DIGIT_VALUE[ch]
        elif ch in _CN_SMALL_UNITS:
            section += (1 if digit is None else digit) * _CN_SMALL_UNITS[ch]
            digit = None
        elif ch == "万":
            total += (section + (digit or 0)) * 10**4
            section, digit = 0, None
        elif ch == "亿":
            total = (total + section + (digit or 0)) * 10**8
            section, digit = 0, None
        else:
            return None
    return total + section + (digit or 0)


def from_chinese_numeral(s: str) -> int | None:
    """The value of a Chinese numeral (三百四十五 -> 345, 两百 -> 200, 十二 -> 12, 一十二 -> 12, 一万零五 -> 10005,
    〇 -> 0), or None when ``s`` is not one written in the standard form (三五, 一百一, 百三, empty)."""
    s = s.strip()
    if not s or any(ch not in _CN_CHARS for ch in s):
        return None
    if s in ("零", "〇"):
        return 0
    value = _parse_numeral(s)
    if value is None or value <= 0 or value >= 10**12:
        return None
    # accept exactly the standard form, up to 两 for 二, 〇 for 零 and a leading 一十
    canonical = to_chinese_numeral(value)
    written = s.replace("两", "二").replace("〇", "零")
    return value if written in (canonical, "一" + canonical if canonical.startswith("十") else canonical) else None


# ---------------------------------------------------------------------------------------------------------------
# answer extraction and normalisation

_MARKER = re.compile(r"答案\s*(?:是|为)?\s*[:：]?|(?:the\s+)?answer\s*(?:is)?\s*[:：]?", re.IGNORECASE)
_NUMBER = re.compile(rf"\d{{1,3}}(?:,\d{{3}})+(?!\d)|\d+|[{_CN_CHARS}]+")


def _answer_span(text: str) -> str:
    """The part of a completion that holds its final answer (NFKC-folded, not yet normalised)."""
    text = unicodedata.normalize("NFKC", text or "")
    marks = list(_MARKER.finditer(text))
    if marks:
        text = text[marks[-1].end():]
    lines = [line for line in text.splitlines() if line.strip()]
    return lines[-1].strip() if lines else ""


def normalize_answer(text: str) -> str:
    """Full-width forms -> ASCII, spaces and punctuation removed, Latin letters case-folded; a whole answer that is
    a number becomes its digits (三百四十五 -> "345", "08" -> "8", "1,000" -> "1000")."""
    text = unicodedata.normalize("NFKC", text or "")
    text = "".join(ch for ch in text if not (ch.isspace() or unicodedata.category(ch).startswith("P")))
    text = text.casefold()
    if text.isascii() and text.isdigit():
        return str(int(text))
    value = from_chinese_numeral(text)
    return str(value) if value is not None else text


def extract_answer(text: str) -> str:
    """The final answer of a completion, normalised: the text after the last answer marker ("答案是", "答案：",
    "The answer is"), else its last non-empty line, through ``normalize_answer``."""
    return normalize_answer(_answer_span(text))


def _numbers(span: str) -> list[int]:
    """Every number in ``span`` in order: ASCII digits (with 1,000 grouping) and Chinese numerals."""
    out = []
    for m in _NUMBER.finditer(span):
        tok = m.group(0)
        if tok[0].isdigit():
            out.append(int(tok.replace(",", "")))
        else:
            v = from_chinese_numeral(tok)
            if v is not None:
                out.append(v)
    return out


def check_number(completion: str, answer: str) -> bool:
    """The shared numeric checker: the last number of the answer span (digits or a Chinese numeral) equals the
    reference."""
    nums = _numbers(_answer_span(completion))
    want = _numbers(unicodedata.normalize("NFKC", answer))
    return bool(nums) and len(want) == 1 and nums[-1] == want[0]


def check_digits(completion: str, answer: str) -> bool:
    """Like ``check_number`` but only ASCII (or full-width) digits count: for ``zh_to_num``, whose question holds the
    Chinese numeral already."""
    nums = [int(t.replace(",", "")) for t in re.findall(r"\d{1,3}(?:,\d{3})+(?!\d)|\d+", _answer_span(completion))]
    want = _numbers(unicodedata.normalize("NFKC", answer))
    return bool(nums) and len(want) == 1 and nums[-1] == want[0]


def check_chinese_numeral(completion: str, answer: str) -> bool:
    """The last Chinese numeral of the answer span has the reference's value (two forms of one value both count:
    两百/二百); digits do not count."""
    want = from_chinese_numeral(answer)
    runs = _CN_RUN.findall(_answer_span(completion))
    return want is not None and bool(runs) and from_chinese_numeral(runs[-1]) == want


def check_text(completion: str, answer: str) -> bool:
    """The answer span equals the reference up to spaces, punctuation, width and Latin case."""
    got = extract_answer(completion)
    return bool(got) and got == normalize_answer(answer)


# dates (next_day): a non-leap year
_MONTH_DAYS = (31, 28, 31, 30, 31, 30, 31, 31, 30, 31, 30, 31)
_MONTHS_EN = ("January", "February", "March", "April", "May", "June", "July", "August", "September", "October",
              "November", "December")
# full names, then abbreviations (Sept before Sep): the first alternative that fits is taken
_MONTH_ALT = "|".join(list(_MONTHS_EN) + ["Sept"] + [m[:3] for m in _MONTHS_EN if m != "May"])
_CN_DAY = "[〇零一二两三四五六七八九十]{1,4}"
# one pattern, so a scan left to right never reads one mention twice ("March 31 April 1": two dates, not "31 April")
_DATE_RE = re.compile(
    rf"\b(?P<m1>{_MONTH_ALT})\b\.?\s*(?P<d1>\d{{1,2}})(?:st|nd|rd|th)?(?!\d)"  # April 1, Apr. 1st
    rf"|(?<!\d)(?P<d2>\d{{1,2}})(?:st|nd|rd|th)?\s+(?:of\s+)?(?P<m2>{_MONTH_ALT})\b"  # 1 April, 1st of April
    rf"|(?<!\d)(?P<zm>\d{{1,2}}|{_CN_DAY})\s*月\s*(?P<zd>\d{{1,2}}|{_CN_DAY})\s*[日号]?",  # 4月1日, 4月1号, 四月一日
    re.IGNORECASE)


def _month_number(name: str) -> int:
    return next(i + 1 for i, m in enumerate(_MONTHS_EN) if m.lower().startswith(name.lower()[:3]))


def _cn_or_int(tok: str) -> int | None:
    return int(tok) if tok.isdigit() else from_chinese_numeral(tok)


def _dates(text: str) -> list[tuple[int, int]]:
    """(month, day) mentions in order: 4月1日 / 4月1号 / 四月一日, April 1 / Apr 1 / 1 April (NFKC-folded first)."""
    out = []
    for m in _DATE_RE.finditer(unicodedata.normalize("NFKC", text)):
        if m.group("m1"):
            month, day = _month_number(m.group("m1")), int(m.group("d1"))
        elif m.group("m2"):
            month, day = _month_number(m.group("m2")), int(m.group("d2"))
        else:
            month, day = _cn_or_int(m.group("zm")), _cn_or_int(m.group("zd"))
            if month is None or day is None:
                continue
        out.append((month, day))
    return out


def check_date(completion: str, answer: str) -> bool:
    """The last date named in the answer span is the reference's month and day (4月1日 == 4月1号 == 四月一日,
    April 1 == Apr 1 == 1 April)."""
    got, want = _dates(_answer_span(completion)), _dates(answer)
    return bool(got) and len(want) == 1 and got[-1] == want[0]


# ---------------------------------------------------------------------------------------------------------------
# the families


@dataclass(frozen=True)
class SkillFamily:
    """One task family: a generator of (question, reference answer), a checker, and what splits need."""

    name: str
    generate: Callable[[random.Random, str], tuple[str, str]]  # (rng, lang) -> (question, reference answer)
    check: Callable[[str, str], bool] = check_number  # (completion, reference answer) -> correct?
    description: str = ""
    # additions beyond the generator and checker: the question's payload read back, and the family's structure
    parse: Callable[[str, str], Payload] = field(default=lambda q, lang: (q,), repr=False)  # (question, lang)
    canon: Callable[[Payload], Payload] = field(default=lambda p: p, repr=False)  # twins (3+5, 5+3) -> one key
    space: Callable[[], list[Payload]] | None = field(default=None, repr=False)  # every payload, when enumerable
    render: Callable[[Payload, str, random.Random], tuple[str, str]] | None = field(default=None, repr=False)
    # optional worked solution (payload, lang) -> a short scratchpad ending in "答案：X" / "answer: X"
    solve: Callable[[Payload, str], str] | None = field(default=None, repr=False)


@dataclass(frozen=True)
class SkillItem:
    """One problem: the question as a user turn, the bare reference answer, its family, language and split;
    ``solution``, when set, is the reply to train on (a worked solution ending in the answer) instead of the answer."""

    family: str
    lang: str
    question: str
    answer: str
    split: str
    solution: str = ""

    def messages(self) -> list[dict]:
        return [{"role": "user", "content": self.question}]

    def conversation(self) -> list[dict]:
        return self.messages() + [{"role": "assistant", "content": self.solution or self.answer}]

    def to_json(self) -> dict:
        """MiniMind chat format plus the keys a checker needs (readers of ``conversations`` ignore the rest)."""
        return {"conversations": self.conversation(), "family": self.family, "answer": self.answer,
                "lang": self.lang, "split": self.split}


def _ints(q: str) -> list[int]:
    return [int(t) for t in re.findall(r"\d+", q)]


def _quoted(q: str) -> list[str]:
    """The strings a question quotes, in order (“…” in Chinese, "…" in English)."""
    return [a or b for a, b in re.findall(r"“([^”]*)”|\"([^\"]*)\"", q)]


def _one_int(q: str, lang: str) -> Payload:
    nums = _ints(q)
    if len(nums) != 1:
        raise ValueError("expected one number")
    return (nums[0],)


def _sorted(p: Payload) -> Payload:
    return tuple(sorted(p))


def _big_first(p: Payload) -> Payload:
    return tuple(sorted(p, reverse=True))


def _family(name: str, description: str, draw: Callable[[random.Random], Payload],
            render: Callable[[Payload, str, random.Random], tuple[str, str]], parse: Callable[[str, str], Payload],
            check: Callable[[str, str], bool] = check_number, canon: Callable[[Payload], Payload] = lambda p: p,
            space: Callable[[], list[Payload]] | None = None,
            solve: Callable[[Payload, str], str] | None = None) -> SkillFamily:
    def generate(rng: random.Random, lang: str) -> tuple[str, str]:
        return render(draw(rng), lang, rng)

    return SkillFamily(name=name, generate=generate, check=check, description=description, parse=parse,
                       canon=canon, space=space, render=render, solve=solve)


# worked solutions: column arithmetic, one place at a time from the ones up (the "detailed scratchpad" of Lee et
# al. 2023, "Teaching Arithmetic to Small Transformers"), then the answer after a marker the checker reads
_PLACES = {"zh": ("个位", "十位", "百位", "千位"), "en": ("ones", "tens", "hundreds", "thousands")}


def _column_solution(op: str, a: int, b: int, lang: str) -> str:
    zh = lang == "zh"
    steps, carry = [], 0
    for i in range(max(len(str(a)), len(str(b)))):
        x, y = a // 10**i % 10, b // 10**i % 10
        place = _PLACES[lang][i]
        if op == "+":
            total = x + y + carry
            step = f"{x}+{y}" + (f"+{carry}" if carry else "") + f"={total}"
            carry = total // 10
            if carry:
                step += f"，写{total % 10}进1" if zh else f" write {total % 10} carry 1"
        else:
            top = x - carry  # the digit after lending 1 to the place below
            carry = 1 if top < y else 0
            step = f"{x}" + ("-1" if x != top else "") + ("+10" if carry else "") + f"-{y}={top + 10 * carry - y}"
            if carry:
                step += "（借1）" if zh else " (borrow 1)"
        steps.append(f"{place}{step}" if zh else f"{place} {step}")
    if carry:  # an addition's last carry is the leading digit
        steps.append(f"{_PLACES[lang][len(steps)]}1" if zh else f"{_PLACES[lang][len(steps)]} 1")
    result = a + b if op == "+" else a - b
    return ("，".join(steps) + f"，答案：{result}") if zh else (", ".join(steps) + f", answer: {result}")


def _solve_op(p: Payload, lang: str) -> str:
    op, a, b = p
    return _column_solution(op, a, b, lang)


def _solve_equation(p: Payload, lang: str) -> str:
    """A one-step word problem: its equation, then the column arithmetic of add/sub (the same steps, so what the
    model learnt there carries over; the bare equation "36+14=50" alone was right 7% of the time on held-out
    problems, as often as add without its scratchpad)."""
    op, a, b = p
    return f"{a}{op}{b}：" + _column_solution(op, a, b, lang) if lang == "zh" else \
        f"{a} {op} {b}: " + _column_solution(op, a, b, lang)


def _mul_solution(a: int, b: int, lang: str) -> str:
    """a (1-99) times a one-digit b, a digit of a at a time from the ones up, the carry added to the next place."""
    zh = lang == "zh"
    steps, carry = [], 0
    for i in range(len(str(a))):
        x = a // 10**i % 10
        total = x * b + carry
        step = f"{x}×{b}" + (f"+{carry}" if carry else "") + f"={total}"
        carry = total // 10
        if carry:
            step += f"，写{total % 10}进{carry}" if zh else f" write {total % 10} carry {carry}"
        steps.append(f"{_PLACES[lang][i]}{step}" if zh else f"{_PLACES[lang][i]} {step}")
    if carry:  # the last carry is the leading digit
        steps.append(f"{_PLACES[lang][len(steps)]}{carry}" if zh else f"{_PLACES[lang][len(steps)]} {carry}")
    return ("，".join(steps) + f"，答案：{a * b}") if zh else (", ".join(steps) + f", answer: {a * b}")


# built-in material: common characters and words without numeral characters (so answers never read as numbers)
_ZH_CHARS = "天地人山水风云花草木月星火土石田米书画歌舞春夏秋冬东西南北大小上下左右中红黄绿白黑青家门车马牛羊鱼鸟心手口耳目头"
_ZH_WORDS = (
    "天气 学校 老师 同学 朋友 中国 人民 北京 上海 春天 夏天 秋天 冬天 花园 大山 河水 太阳 月亮 星星 电话 电脑 手机 汽车 火车 "
    "飞机 书包 文字 语言 音乐 电影 工作 生活 学习 时间 地方 问题 东西 世界 国家 社会 文化 历史 科学 技术 发展 家庭 孩子 父母 "
    "妈妈 爸爸 哥哥 姐姐 弟弟 妹妹 天天 人人 大大 小小 山水 水果 花草 白天 黑夜 大学 小学 中学 医生 医院 商店 市场 公园 动物 "
    "小鸟 小狗 小猫 米饭 面条 茶杯 门口 窗口 路口 大海 草地 高山 天空 白云 红花 绿叶 春风 秋雨 雪花 新年 快乐 美好 朋友们"
).split()
_EN_LETTERS = "abcdefghijklmnopqrstuvwxyz"
_EN_WORDS = (
    "strawberry banana apple cherry orange lemon letter coffee balloon bookkeeper committee success address pepper "
    "grammar mississippi tomato potato river mountain window garden school teacher student friend summer winter "
    "yellow little bottle rabbit kitten puppy cookie dinner butter paper pencil button hello happy silly sunny "
    "tree street green sheep cheese queen needle bubble giraffe elephant banner cotton letterbox assessment"
).split()


# copy ------------------------------------------------------------------------------------------------------------
def _copy_draw(rng: random.Random, lang: str = "zh") -> str:
    if lang == "zh":
        return "".join(rng.choice(_ZH_CHARS) for _ in range(rng.randint(2, 5)))
    return "".join(rng.choice(_EN_LETTERS) for _ in range(rng.randint(3, 6)))


def _copy_render(p: Payload, lang: str, rng: random.Random) -> tuple[str, str]:
    (s,) = p
    if lang == "zh":
        return rng.choice(("请原样重复：“{s}”", "复述：“{s}”")).format(s=s), s
    return rng.choice(('Repeat: "{s}"', 'Say "{s}" again.')).format(s=s), s


def _reverse_render(p: Payload, lang: str, rng: random.Random) -> tuple[str, str]:
    (s,) = p
    if lang == "zh":
        return rng.choice(("把“{s}”倒过来写。", "倒序写出“{s}”。")).format(s=s), s[::-1]
    return rng.choice(('Write "{s}" backwards.', 'Reverse "{s}".')).format(s=s), s[::-1]


def _string_family(name: str, description: str, render: Callable, check: Callable) -> SkillFamily:
    """copy / reverse: a short random string in the question's alphabet (Han characters or Latin letters)."""

    def generate(rng: random.Random, lang: str) -> tuple[str, str]:
        return render((_copy_draw(rng, lang),), lang, rng)

    return SkillFamily(name=name, generate=generate, check=check, description=description,
                       parse=lambda q, lang: (_quoted(q)[0],), render=render)


# compare ---------------------------------------------------------------------------------------------------------
def _compare_draw(rng: random.Random) -> Payload:
    a = rng.randint(0, 99)
    return (a, (a + rng.randint(1, 99)) % 100)  # any other number, uniformly


def _compare_render(p: Payload, lang: str, rng: random.Random) -> tuple[str, str]:
    a, b = p
    if lang == "zh":
        q = rng.choice(("哪个数更大：{a}还是{b}？", "{a}和{b}，哪个更大？"))
    else:
        q = rng.choice(("Which is larger: {a} or {b}?", "Which number is bigger, {a} or {b}?"))
    return q.format(a=a, b=b), str(max(a, b))


# next_day --------------------------------------------------------------------------------------------------------
_DATE_OFFSETS = (-1, 1, 2, 3)  # the day before, the day after, 2 and 3 days later
_YEAR_START = tuple(sum(_MONTH_DAYS[:i]) for i in range(12))  # day of the year (0-based) of each month's 1st


def _next_day_space() -> list[Payload]:
    return [(m, d, k) for m in range(1, 13) for d in range(1, _MONTH_DAYS[m - 1] + 1) for k in _DATE_OFFSETS]


def _next_day_draw(rng: random.Random) -> Payload:
    m = rng.randint(1, 12)
    return (m, rng.randint(1, _MONTH_DAYS[m - 1]), rng.choice(_DATE_OFFSETS))


def _shift_date(month: int, day: int, k: int) -> tuple[int, int]:
    """(month, day) k days later in a non-leap year, wrapping Dec 31 -> Jan 1 (and back)."""
    doy = (_YEAR_START[month - 1] + day - 1 + k) % 365
    m = max(i for i in range(12) if _YEAR_START[i] <= doy)
    return m + 1, doy - _YEAR_START[m] + 1


def _date_text(month: int, day: int, lang: str) -> str:
    return f"{month}月{day}日" if lang == "zh" else f"{_MONTHS_EN[month - 1]} {day}"


def _next_day_render(p: Payload, lang: str, rng: random.Random) -> tuple[str, str]:
    m, d, k = p
    date, ans = _date_text(m, d, lang), _date_text(*_shift_date(m, d, k), lang)
    if lang == "zh":
        if k == 1:
            q = rng.choice(("{date}的后一天是几月几日？", "{date}的下一天是几月几日？"))
        elif k == -1:
            q = "{date}的前一天是几月几日？"
        else:
            q = "{date}再过{k}天是几月几日？"
    else:
        if k == 1:
            q = rng.choice(("What date is the day after {date}?", "What is the date the day after {date}?"))
        elif k == -1:
            q = "What date is the day before {date}?"
        else:
            q = "What date is it {k} days after {date}?"
    return q.format(date=date, k=k), ans


def _next_day_parse(q: str, lang: str) -> Payload:
    dates = _dates(q)
    if len(dates) != 1:
        raise ValueError("expected one date")
    later = re.search(r"再过(\d+)天" if lang == "zh" else r"(\d+) days after", q)
    if later:
        k = int(later.group(1))
    elif re.search(r"前一天" if lang == "zh" else r"day before", q):
        k = -1
    elif re.search(r"[后下]一天" if lang == "zh" else r"day after", q):
        k = 1
    else:
        raise ValueError("no day before / after")
    return (*dates[0], k)


# mul, add, sub --------------------------------------------------------------------------------------------------
def _binary_render(symbol_zh: str, word_zh: str, symbol_en: str, word_en: str, op: Callable[[int, int], int]):
    def render(p: Payload, lang: str, rng: random.Random) -> tuple[str, str]:
        a, b = p
        if lang == "zh":
            q = rng.choice((f"{{a}}{symbol_zh}{{b}}等于多少？", f"{{a}}{word_zh}{{b}}等于几？"))
        else:
            q = rng.choice((f"What is {{a}} {symbol_en} {{b}}?", f"What is {{a}} {word_en} {{b}}?"))
        return q.format(a=a, b=b), str(op(a, b))

    return render


def _pair_parse(q: str, lang: str) -> Payload:
    nums = _ints(q)
    if len(nums) != 2:
        raise ValueError("expected two numbers")
    return tuple(nums)


# num_to_zh / zh_to_num -------------------------------------------------------------------------------------------
def _num_to_zh_render(p: Payload, lang: str, rng: random.Random) -> tuple[str, str]:
    (n,) = p
    q = rng.choice(("把{n}写成中文数字。", "{n}用汉字怎么写？")) if lang == "zh" else "Write {n} in Chinese numerals."
    return q.format(n=n), to_chinese_numeral(n)


def _zh_to_num_render(p: Payload, lang: str, rng: random.Random) -> tuple[str, str]:
    (n,) = p
    q = rng.choice(("把{z}写成阿拉伯数字。", "{z}用数字怎么写？")) if lang == "zh" else "Write {z} in digits."
    return q.format(z=to_chinese_numeral(n)), str(n)


def _zh_to_num_parse(q: str, lang: str) -> Payload:
    vals = [from_chinese_numeral(r) for r in _CN_RUN.findall(q)]
    vals = [v for v in vals if v is not None]
    if len(vals) != 1:
        raise ValueError("expected one Chinese numeral")
    return (vals[0],)


# count_char ------------------------------------------------------------------------------------------------------
def _count_phrase(rng: random.Random, lang: str, phrases: Sequence[str] | None) -> str:
    if phrases:
        return rng.choice(phrases)
    if lang == "zh":  # two or three common words: many phrases, with repeated characters to count
        return "".join(rng.choice(_ZH_WORDS) for _ in range(rng.randint(2, 3)))
    return rng.choice(_EN_WORDS) if rng.random() < 0.5 else f"{rng.choice(_EN_WORDS)} {rng.choice(_EN_WORDS)}"


def _count_generate(rng: random.Random, lang: str, phrases: Sequence[str] | None = None) -> tuple[str, str]:
    phrase = _count_phrase(rng, lang, phrases)
    letters = [c for c in phrase if not c.isspace()]
    if rng.random() < 0.8:  # mostly a character of the phrase (1..n), sometimes any character (often 0)
        ch = rng.choice(letters)
    else:
        ch = rng.choice(_ZH_CHARS if lang == "zh" else _EN_LETTERS)
    return _count_render((phrase, ch), lang, rng)


def _count_render(p: Payload, lang: str, rng: random.Random) -> tuple[str, str]:
    phrase, ch = p
    if lang == "zh":
        q = rng.choice(("“{p}”里有几个“{c}”？", "“{p}”中“{c}”出现了几次？"))
    else:
        q = rng.choice(('How many "{c}" are in "{p}"?', 'How many times does "{c}" appear in "{p}"?'))
    return q.format(p=phrase, c=ch), str(phrase.count(ch))


def _count_parse(q: str, lang: str) -> Payload:
    s = _quoted(q)
    if len(s) != 2:
        raise ValueError("expected two quoted strings")
    return (s[0], s[1]) if lang == "zh" else (s[1], s[0])


# word problems ---------------------------------------------------------------------------------------------------
_NAMES_ZH, _NAMES_EN = ("小明", "小红", "小刚", "小丽"), ("Tom", "Amy", "Ben", "Lily")
_THINGS_ZH = (("个", "苹果"), ("个", "橘子"), ("支", "铅笔"), ("本", "书"), ("颗", "糖"))
_THINGS_EN = ("apples", "oranges", "pencils", "books", "candies")
_WP_MAX = 50


def _wp_draw(rng: random.Random) -> Payload:
    if rng.random() < 0.5:
        return ("+", rng.randint(1, _WP_MAX), rng.randint(1, _WP_MAX))
    a = rng.randint(2, _WP_MAX)
    return ("-", a, rng.randint(1, a - 1))


def _wp_render(p: Payload, lang: str, rng: random.Random) -> tuple[str, str]:
    op, a, b = p
    ans = str(a + b if op == "+" else a - b)
    if lang == "zh":
        name, (unit, thing) = rng.choice(_NAMES_ZH), rng.choice(_THINGS_ZH)
        if op == "+":
            q = f"{name}有{a}{unit}{thing}，又买了{b}{unit}，一共有几{unit}？"
        else:
            q = f"{name}有{a}{unit}{thing}，{rng.choice(('送出', '丢了'))}{b}{unit}，还剩几{unit}？"
    else:
        name, thing = rng.choice(_NAMES_EN), rng.choice(_THINGS_EN)
        if op == "+":
            q = f"{name} has {a} {thing} and buys {b} more. How many {thing} does {name} have now?"
        else:
            q = f"{name} has {a} {thing} and {rng.choice(('gives away', 'loses'))} {b}. How many {thing} are left?"
    return q, ans


def _wp_parse(q: str, lang: str) -> Payload:
    a, b = _pair_parse(q, lang)
    return ("-" if ("还剩" in q or "left" in q) else "+", a, b)


def _wp_canon(p: Payload) -> Payload:
    op, a, b = p
    return (op, min(a, b), max(a, b)) if op == "+" else p


# three-digit sums (the harder tier) ------------------------------------------------------------------------------
def _add3_draw(rng: random.Random) -> Payload:
    a, b = rng.randint(100, 999), rng.randint(100, 999)
    return ("+", a, b) if rng.random() < 0.5 else ("-", max(a, b), min(a, b))


def _add3_render(p: Payload, lang: str, rng: random.Random) -> tuple[str, str]:
    op, a, b = p
    word_zh, word_en = ("加", "plus") if op == "+" else ("减", "minus")
    if lang == "zh":
        q = rng.choice((f"{a}{op}{b}等于多少？", f"{a}{word_zh}{b}等于几？"))
    else:
        q = rng.choice((f"What is {a} {op} {b}?", f"What is {a} {word_en} {b}?"))
    return q, str(a + b if op == "+" else a - b)


def _add3_parse(q: str, lang: str) -> Payload:
    a, b = _pair_parse(q, lang)
    return ("-" if ("-" in q or "减" in q or "minus" in q) else "+", a, b)


def _build_families() -> dict[str, SkillFamily]:
    fams = [
        _string_family("copy", "repeat a short string (2-5 Han characters / 3-6 letters)", _copy_render, check_text),
        _family("compare", "the larger of two numbers 0-99", _compare_draw, _compare_render, _pair_parse,
                canon=_sorted, space=lambda: [(a, b) for a in range(100) for b in range(100) if a != b]),
        _family("num_to_zh", "a number 0-999 written as a Chinese numeral", lambda r: (r.randint(0, 999),),
                _num_to_zh_render, _one_int,
                check=check_chinese_numeral, space=lambda: [(n,) for n in range(1000)]),
        _family("zh_to_num", "a Chinese numeral 0-999 written in digits", lambda r: (r.randint(0, 999),),
                _zh_to_num_render, _zh_to_num_parse, check=check_digits, space=lambda: [(n,) for n in range(1000)]),
        _family("next_day", "the date the day before, after, or 2-3 days after a date (a non-leap year)",
                _next_day_draw, _next_day_render, _next_day_parse, check=check_date,
                space=_next_day_space),
        _family("add", "the sum of two numbers 0-99", lambda r: (r.randint(0, 99), r.randint(0, 99)),
                _binary_render("+", "加", "+", "plus", lambda a, b: a + b), _pair_parse, canon=_sorted,
                space=lambda: [(a, b) for a in range(100) for b in range(100)],
                solve=lambda p, lang: _solve_op(("+", *p), lang)),
        _family("sub", "the difference a - b of numbers 0-99, a >= b",
                lambda r: tuple(sorted((r.randint(0, 99), r.randint(0, 99)), reverse=True)),
                _binary_render("-", "减", "-", "minus", lambda a, b: a - b), _pair_parse,
                space=lambda: [(a, b) for a in range(100) for b in range(a + 1)],
                solve=lambda p, lang: _solve_op(("-", *p), lang)),
        _family("mul", "a number 1-99 times a one-digit number 2-9 (the larger written first)",
                lambda r: _big_first((r.randint(1, 99), r.randint(2, 9))),
                _binary_render("×", "乘", "×", "times", lambda a, b: a * b), _pair_parse, canon=_big_first,
                space=lambda: sorted({_big_first((a, b)) for a in range(1, 100) for b in range(2, 10)}),
                solve=lambda p, lang: _mul_solution(*p, lang)),
        SkillFamily(name="count_char", generate=_count_generate, check=check_number,
                    description="how many times a character occurs in a phrase (SpellingBee, in Chinese)",
                    parse=_count_parse, render=_count_render),
        _string_family("reverse", "a short string backwards (2-5 Han characters / 3-6 letters)", _reverse_render,
                       check_text),
        _family("word_problem", "one-step word problems: buy more (sum) or give away / lose (difference), 1-50",
                _wp_draw, _wp_render, _wp_parse, canon=_wp_canon, solve=_solve_equation,
                space=lambda: [("+", a, b) for a in range(1, _WP_MAX + 1) for b in range(1, _WP_MAX + 1)]
                + [("-", a, b) for a in range(2, _WP_MAX + 1) for b in range(1, a)]),
        _family("add3", "three-digit sums and differences (the harder tier)", _add3_draw, _add3_render, _add3_parse,
                canon=_wp_canon, solve=_solve_op),
    ]
    return {f.name: f for f in fams}


FAMILIES: dict[str, SkillFamily] = _build_families()


# ---------------------------------------------------------------------------------------------------------------
# splits


def _key(family: str, payload: Payload) -> str:
    return family + "|" + "|".join(map(str, payload))


def _bucket(key: str) -> int:
    return int.from_bytes(hashlib.sha256(key.encode("utf-8")).digest()[:8], "big")


@lru_cache(maxsize=None)
def _ranked_splits(family: str) -> dict[str, str]:
    """canonical key -> split for a family with an enumerable space: keys sorted by hash, 10% test, 10% val."""
    fam = FAMILIES[family]
    keys = sorted({_key(family, fam.canon(p)) for p in fam.space()}, key=lambda k: (_bucket(k), k))
    n_test = n_val = max(1, round(len(keys) / 10))
    return {k: ("test" if i < n_test else "val" if i < n_test + n_val else "train") for i, k in enumerate(keys)}


def _split_of_payload(family: str, payload: Payload) -> str:
    fam = FAMILIES[family]
    key = _key(family, fam.canon(payload))
    if fam.space is not None:
        split = _ranked_splits(family).get(key)
        if split is None:
            raise ValueError(f"skills: {family} problem {payload} is outside the family's problem space")
        return split
    b = _bucket(key) % 10
    return "test" if b == 0 else "val" if b == 1 else "train"


def _family_of(family: str) -> SkillFamily:
    if family not in FAMILIES:
        raise ValueError(f"skills: unknown family {family!r}; expected one of {', '.join(FAMILIES)}")
    return FAMILIES[family]


def _check_lang(lang: str, allowed: Sequence[str] = LANGS) -> None:
    if lang not in allowed:
        raise ValueError(f"skills: lang must be one of {', '.join(allowed)}, got {lang!r}")


def _payload(family: str, lang: str, question: str) -> Payload:
    """The problem's numbers and strings read back from its wording, or ValueError naming the question."""
    fam = _family_of(family)
    _check_lang(lang)
    try:
        return fam.parse(question, lang)
    except (ValueError, IndexError, TypeError) as e:
        raise ValueError(f"skills: cannot read a {family} ({lang}) problem from {question!r}: {e}") from None


def canonical_key(family: str, lang: str, question: str) -> str:
    """The language-independent key of a question's problem (family + payload, twins folded): what splits hash."""
    return _key(family, _family_of(family).canon(_payload(family, lang, question)))


def split_of(family: str, lang: str, question: str) -> str:
    """The split ("train" | "val" | "test") the problem of ``question`` belongs to; see the module docstring."""
    return _split_of_payload(family, _payload(family, lang, question))


def split_sizes(family: str) -> dict[str, int] | None:
    """Distinct canonical problems per split for a family with an enumerable space (None for the others)."""
    if _family_of(family).space is None:
        return None
    counts = {s: 0 for s in SPLITS}
    for split in _ranked_splits(family).values():
        counts[split] += 1
    return counts


# ---------------------------------------------------------------------------------------------------------------
# building item lists

_STALL = 5000  # draws in a row without a new problem of the split: the split is exhausted


def _usable_words(words: Sequence[str], lang: str) -> list[str]:
    """Phrases from the corpus that a count_char question can quote: Han-only (zh) or lower-case letters (en)."""
    out = []
    for w in words:
        w = unicodedata.normalize("NFKC", str(w)).strip()
        if lang == "zh" and 2 <= len(w) <= 12 and re.fullmatch(r"[\u4e00-\u9fff]+", w) and not _CN_RUN.search(w):
            out.append(w)
        elif lang == "en" and 3 <= len(w) <= 16 and re.fullmatch(r"[a-z]+(?: [a-z]+)*", w.lower()):
            out.append(w.lower())
    return sorted(set(out))


def _family_items(name: str, split: str, n: int, seed: int, langs: Sequence[str],
                  words: Sequence[str] | None, worked: bool) -> list[SkillItem]:
    fam = FAMILIES[name]
    rng = random.Random(f"minigpt-skills|{seed}|{name}|{split}|{'+'.join(langs)}")
    generators = {lang: fam.generate for lang in langs}
    if name == "count_char" and words is not None:
        for lang in langs:
            phrases = _usable_words(words, lang)
            if phrases:
                generators[lang] = partial(_count_generate, phrases=phrases)
            else:
                logger.warning("skills: none of the %d words fit a %s count_char question; using the built-in list",
                               len(words), lang)
    items: list[SkillItem] = []
    seen: set[tuple] = set()
    if fam.space is not None and fam.render is not None:
        # enumerable: every problem of the split, shuffled, then rendered in alternating languages
        ranked = _ranked_splits(name)
        pool = [p for p in fam.space() if ranked[_key(name, fam.canon(p))] == split]
        rng.shuffle(pool)
        for p in pool[:n]:
            lang = langs[len(items) % len(langs)]
            q, a = fam.render(p, lang, rng)
            items.append(SkillItem(name, lang, q, a, split))
    else:
        stall = 0
        while len(items) < n and stall < _STALL:
            lang = langs[len(items) % len(langs)]
            q, a = generators[lang](rng, lang)
            payload = fam.parse(q, lang)
            inst = payload  # one problem once (its twins may both appear: 3+5 and 5+3)
            if inst in seen or _split_of_payload(name, payload) != split:
                stall += 1
                continue
            stall = 0
            seen.add(inst)
            items.append(SkillItem(name, lang, q, a, split))
    if len(items) < n:
        if split == "train" and items and fam.render is not None:
            # too few distinct train problems: repeat them, as further epochs would, with fresh wording and (for
            # "both") the languages still alternating, so a problem seen in zh is also seen in en
            base = list(items)
            while len(items) < n:
                cycle, i = divmod(len(items), len(base))
                it = base[i]
                lang = langs[(langs.index(it.lang) + cycle) % len(langs)]
                q, a = fam.render(fam.parse(it.question, it.lang), lang, rng)
                items.append(SkillItem(name, lang, q, a, split))
        else:
            logger.info("skills: %s has %d distinct %s problems (asked for %d)", name, len(items), split, n)
    if worked and fam.solve is not None:
        items = [replace(it, solution=fam.solve(fam.parse(it.question, it.lang), it.lang)) for it in items]
    return items


def make_skills(split: str, n_per_family: int, seed: int = 0, lang: str = "zh",
                families: Sequence[str] | None = None, words: Sequence[str] | None = None,
                worked: bool = False) -> list[SkillItem]:
    """``n_per_family`` problems of each family (all by default, in ``FAMILIES`` order) from ``split``.

    Deterministic for its arguments. ``lang`` "zh", "en" or "both" (items alternate zh, en). ``words``: phrases
    from the run's corpus for ``count_char`` (Han-only 2-12 characters for zh; the built-in list otherwise). A
    val/test list holds each problem once and may be shorter than asked (see ``split_sizes``); a train list is
    filled by repeating problems when its split has too few. ``worked``: items of families with a worked solution
    (add, sub, add3: column arithmetic; mul: the same, a digit of the larger factor at a time; word_problem: the
    equation, then its column arithmetic) reply with it, ending in "答案：X" / "answer: X"; the problems are the same as without it."""
    if split not in SPLITS:
        raise ValueError(f"skills: split must be one of {', '.join(SPLITS)}, got {split!r}")
    _check_lang(lang, LANGS + ("both",))
    if not isinstance(n_per_family, int) or n_per_family < 0:
        raise ValueError(f"skills: n_per_family must be an int >= 0, got {n_per_family!r}")
    names = list(FAMILIES) if families is None else list(families)
    for name in names:
        _family_of(name)
    langs = LANGS if lang == "both" else (lang,)
    out: list[SkillItem] = []
    for name in names:
        out.extend(_family_items(name, split, n_per_family, seed, langs, words, worked))
    return out


# ---------------------------------------------------------------------------------------------------------------
# checking and files


# The most new tokens a skill reply needs: worked add3 solutions are ~57 tokens with the demo's tokenizer (digits
# are single tokens); evaluation, the RL rollouts and DPO's sampled replies all stop there (or at <|im_end|>).
REPLY_TOKENS = 80


def reference_reply(item: SkillItem, worked: bool) -> str:
    """The reply a model should give: the item's own solution, else with ``worked`` its family's worked solution
    (val/test items are stored bare), else the bare answer."""
    if item.solution:
        return item.solution
    fam = _family_of(item.family)
    if worked and fam.solve is not None:
        return fam.solve(fam.parse(item.question, item.lang), item.lang)
    return item.answer


def check_answer(family: str, completion: str, answer: str) -> bool:
    """Is ``completion`` a correct reply to a ``family`` problem whose reference answer is ``answer``?"""
    return bool(_family_of(family).check(completion, answer))


def reward(item: SkillItem, completion: str) -> float:
    """1.0 when the completion is correct, else 0.0: the evaluation's checker, as the RL reward."""
    return 1.0 if check_answer(item.family, completion, item.answer) else 0.0


def write_skills_jsonl(items: Iterable[SkillItem], path: str | Path) -> int:
    """Write items as MiniMind chat JSONL (one ``to_json`` object a line), atomically; returns the line count."""
    lines = [json.dumps(it.to_json(), ensure_ascii=False) for it in items]
    atomic_write_text(path, "".join(line + "\n" for line in lines))
    return len(lines)


def _item_from_json(obj: object, where: str) -> SkillItem:
    if not isinstance(obj, dict):
        raise ValueError(f"{where}: expected a JSON object, got {type(obj).__name__}")
    for key, allowed in (("family", tuple(FAMILIES)), ("lang", LANGS), ("split", SPLITS)):
        if obj.get(key) not in allowed:
            raise ValueError(f"{where}: key {key!r} must be one of {', '.join(allowed)}, got {obj.get(key)!r}")
    answer = obj.get("answer")
    if not isinstance(answer, str) or not answer.strip():
        raise ValueError(f"{where}: key 'answer' must be a non-empty string, got {answer!r}")
    conv = obj.get("conversations")
    if not isinstance(conv, list) or not 1 <= len(conv) <= 2:
        raise ValueError(f"{where}: key 'conversations' must be a list of a user turn and an assistant turn")
    for turn, role in zip(conv, ("user", "assistant")):
        if not (isinstance(turn, dict) and turn.get("role") == role and isinstance(turn.get("content"), str)
                and turn["content"].strip()):
            raise ValueError(f"{where}: key 'conversations' must hold {{'role': '{role}', 'content': <text>}} "
                             f"in that place, got {turn!r}")
    reply = conv[1]["content"] if len(conv) == 2 else answer
    return SkillItem(obj["family"], obj["lang"], conv[0]["content"], answer, obj["split"],
                     solution="" if reply == answer else reply)


def read_skills_jsonl(path: str | Path, split: str | None = None) -> list[SkillItem]:
    """Read a file ``write_skills_jsonl`` wrote (or a user edited); every line is validated, and a bad one raises
    ValueError naming ``path:line`` and the key. Blank lines are skipped. With ``split``, every line must be of it.

    A question the family's parser can read must carry the split ``split_of`` gives it (an edit that moved a test
    problem into a train file is an error); one it cannot read (a user's own wording) is kept, and counted in the
    log, since its split cannot be checked."""
    path = Path(path)
    items, unchecked = [], 0
    for line in iter_json_lines(path):  # the package's JSONL reader (strict UTF-8, lines split on \n only)
        where = f"{path}:{line.line}"
        if not line.ok:
            what = "not UTF-8" if line.reason == INVALID_UTF8 else "not valid JSON"
            raise ValueError(f"{where}: {what} ({line.detail})")
        obj = line.value
        item = _item_from_json(obj, where)
        if split is not None and item.split != split:
            raise ValueError(f"{where}: key 'split' is {item.split!r}; this file holds {split!r} problems only")
        try:
            belongs = split_of(item.family, item.lang, item.question)
        except ValueError:
            unchecked += 1
        else:
            if belongs != item.split:
                raise ValueError(f"{where}: key 'split' is {item.split!r} but this {item.family} problem belongs "
                                 f"to {belongs!r} (splits never share a problem)")
        items.append(item)
    if unchecked:
        logger.info("skills: %s: %d questions not in a built-in wording; their splits were not checked", path,
                    unchecked)
    return items


# ---------------------------------------------------------------------------------------------------------------
# the run's skills folder: what notebook 01 writes and 02, 04, 06, 07 and 08 read

SKILLS_DIR = "skills"  # runs/<run>/data/skills/{train,val,test}.jsonl


@dataclass
class SkillsConfig:
    """Notebook 01's skills parameters: the built-in problems written to ``data/skills/`` for the later notebooks."""

    skills_train_per_family: int = 1000  # training problems per family (02's tokenizer text, 04's SFT, 07, 08)
    skills_eval_per_family: int = 200  # held-out problems per family in val and in test (fewer where a family has fewer)
    skills_lang: str = "zh"  # zh | en | both
    skills_seed: int = 0
    skills_worked: bool = False  # train replies with worked solutions for the families that have one

    def validate(self) -> None:
        for key in ("skills_train_per_family", "skills_eval_per_family", "skills_seed"):
            v = getattr(self, key)
            if not isinstance(v, int) or isinstance(v, bool) or v < 0:
                raise ValueError(f"{key}: expected an integer >= 0, got {v!r}")
        if self.skills_lang not in LANGS + ("both",):
            raise ValueError(f"skills_lang: expected one of zh, en, both, got {self.skills_lang!r}")
        if not isinstance(self.skills_worked, bool):
            raise ValueError(f"skills_worked: expected true or false, got {self.skills_worked!r}")


def write_run_skills(data_dir: str | Path, cfg: SkillsConfig) -> dict[str, dict[str, int]]:
    """Write ``data_dir/skills/{train,val,test}.jsonl`` (MiniMind chat JSONL, one problem a line, editable);
    returns {split: {family: count}}. The same config gives the same files. With ``skills_worked`` the train replies
    are worked solutions where a family has one; val and test stay bare (the checker reads the final answer only)."""
    cfg.validate()
    folder = Path(data_dir) / SKILLS_DIR
    counts: dict[str, dict[str, int]] = {}
    for split in SPLITS:
        n = cfg.skills_train_per_family if split == "train" else cfg.skills_eval_per_family
        items = make_skills(split, n, seed=cfg.skills_seed, lang=cfg.skills_lang,
                            worked=cfg.skills_worked and split == "train")
        write_skills_jsonl(items, folder / f"{split}.jsonl")
        counts[split] = {}
        for it in items:
            counts[split][it.family] = counts[split].get(it.family, 0) + 1
    logger.info("skills: %s", ", ".join(f"{s} {sum(c.values())}" for s, c in counts.items()))
    return counts


def load_run_skills(data_dir: str | Path, split: str, families: Sequence[str] | None = None,
                    per_family: int | None = None) -> list[SkillItem]:
    """The problems of ``split`` that notebook 01 wrote (or a user edited), optionally only some families and at
    most ``per_family`` of each (the file's first ones)."""
    path = Path(data_dir) / SKILLS_DIR / f"{split}.jsonl"
    if not path.is_file():
        raise FileNotFoundError(f"{path} not found: run notebooks/01_data_clean first (it writes the built-in skills)")
    wanted = set(families) if families else None
    taken: dict[str, int] = {}
    out = []
    for it in read_skills_jsonl(path, split):  # a line of another split is an error naming its line
        if wanted is not None and it.family not in wanted:
            continue
        if per_family is not None and taken.get(it.family, 0) >= per_family:
            continue
        taken[it.family] = taken.get(it.family, 0) + 1
        out.append(it)
    return out
