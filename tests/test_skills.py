"""Built-in verifiable skills: numerals, checkers on hand-written replies, splits, determinism, JSONL files."""
import json
import random

import pytest

from minigpt.data import skills as S
from minigpt.data.chat_source import ChatReport, read_chat_file
from minigpt.data.normalize import normalize

# (value, Chinese numeral) written by hand
NUMERALS = [
    (0, "零"), (1, "一"), (2, "二"), (10, "十"), (11, "十一"), (12, "十二"), (19, "十九"), (20, "二十"), (21, "二十一"),
    (99, "九十九"), (100, "一百"), (101, "一百零一"), (110, "一百一十"), (111, "一百一十一"), (200, "二百"),
    (345, "三百四十五"), (909, "九百零九"), (1000, "一千"), (1005, "一千零五"), (1010, "一千零一十"),
    (1100, "一千一百"), (2026, "二千零二十六"), (10000, "一万"), (10005, "一万零五"), (10010, "一万零一十"),
    (10100, "一万零一百"), (11000, "一万一千"), (100000, "十万"), (100010, "十万零一十"), (110000, "十一万"),
    (1000000, "一百万"), (100000000, "一亿"), (100000001, "一亿零一"), (123456789, "一亿二千三百四十五万六千七百八十九"),
]


@pytest.mark.parametrize("value,numeral", NUMERALS)
def test_chinese_numerals_both_ways(value, numeral):
    assert S.to_chinese_numeral(value) == numeral
    assert S.from_chinese_numeral(numeral) == value


@pytest.mark.parametrize("text,value", [("两百", 200), ("两千零五", 2005), ("一十二", 12), ("〇", 0), ("一十万", 100000),
                                        ("三百四十五", 345), ("一万零五", 10005)])
def test_chinese_numeral_variants_are_read(text, value):
    assert S.from_chinese_numeral(text) == value


@pytest.mark.parametrize("text", ["", "三五", "一百一", "百三", "一零五", "二〇", "十十", "三百四十五个", "abc", "一百零零五"])
def test_not_a_chinese_numeral(text):
    assert S.from_chinese_numeral(text) is None


def test_every_number_round_trips():
    for n in list(range(0, 12000)) + [10**8 + 7, 10**11 + 10**4, 999_999_999_999]:
        assert S.from_chinese_numeral(S.to_chinese_numeral(n)) == n, n
    for bad in (-1, 10**12, 1.5, True):
        with pytest.raises(ValueError):
            S.to_chinese_numeral(bad)


@pytest.mark.parametrize("text,normalised", [("三百四十五", "345"), ("两百", "200"), ("十二", "12"), ("一万零五", "10005"),
                                             ("３４５", "345"), (" 3 4 5 。", "345"), ("08", "8"), ("1,000", "1000"),
                                             ("Hello, World!", "helloworld"), ("“花山水月”", "花山水月"),
                                             ("ＡＢＣ", "abc"), ("星期三", "星期三")])
def test_normalize_answer(text, normalised):
    assert S.normalize_answer(text) == normalised


@pytest.mark.parametrize("text,extracted", [("答案是 8。", "8"), ("答案：８", "8"), ("The answer is 8.", "8"),
                                            ("3+5=8\n答案：8", "8"), ("先算3+5\n8", "8"), ("", ""), ("   ", ""),
                                            ("Answer: Wednesday", "wednesday"), ("答案是三百四十五", "345")])
def test_extract_answer(text, extracted):
    assert S.extract_answer(text) == extracted


# (family, completion, reference, correct?) written by hand
CASES = [
    # numeric families: the last number counts, digits / full-width / Chinese numerals alike
    ("add", "68", "68", True), ("add", "答案是 68。", "68", True), ("add", "68 个", "68", True),
    ("add", "The answer is 68.", "68", True), ("add", "６８", "68", True), ("add", "六十八", "68", True),
    ("add", "23+45=68", "68", True), ("add", "67", "68", False), ("add", "", "68", False),
    ("add", "68或67", "68", False), ("add", "答案是68，不对，是69", "68", False), ("add", "六十七", "68", False),
    ("add", "我不知道", "68", False), ("add", "680", "68", False), ("add3", "1,132", "1132", True),
    ("sub", "0", "0", True), ("sub", "零", "0", True), ("sub", "", "0", False),
    ("mul", "23×4=92", "92", True), ("mul", "九十二", "92", True), ("mul", "23×4=93", "92", False),
    ("mul", "个位3×4=12，写2进1，十位2×4+1=9，答案：92", "92", True), ("mul", "个位3×4=12，十位2×4=8，答案：82", "92", False),
    ("compare", "52", "52", True), ("compare", "52更大。", "52", True), ("compare", "37", "52", False),
    ("compare", "52比37大", "52", False),
    ("count_char", "2", "2", True), ("count_char", "一共有两个", "2", True), ("count_char", "“天”出现了2次", "2", True),
    ("count_char", "3", "2", False), ("count_char", "0", "0", True),
    ("word_problem", "8", "8", True), ("word_problem", "一共有8个。", "8", True), ("word_problem", "小明一共有八个苹果", "8", True),
    ("word_problem", "3+5=9", "8", False),
    # num_to_zh wants a Chinese numeral; zh_to_num wants digits
    ("num_to_zh", "三百四十五", "三百四十五", True), ("num_to_zh", "答案：三百四十五。", "三百四十五", True),
    ("num_to_zh", "二百", "二百", True), ("num_to_zh", "两百", "二百", True), ("num_to_zh", "一十五", "十五", True),
    ("num_to_zh", "345", "三百四十五", False), ("num_to_zh", "三百五十四", "三百四十五", False),
    ("num_to_zh", "三百四十", "三百四十五", False), ("num_to_zh", "", "零", False), ("num_to_zh", "零", "零", True),
    ("zh_to_num", "345", "345", True), ("zh_to_num", "３４５", "345", True), ("zh_to_num", "答案是345。", "345", True),
    ("zh_to_num", "三百四十五", "345", False), ("zh_to_num", "354", "345", False),
    # dates: the last month and day named; 日 == 号, full-width digits, Chinese numerals, English month names
    ("next_day", "4月1日", "4月1日", True), ("next_day", "4月1号", "4月1日", True), ("next_day", "４月１日", "4月1日", True),
    ("next_day", "答案是4月1日。", "4月1日", True), ("next_day", "3月31日的后一天是4月1日。", "4月1日", True),
    ("next_day", "四月一日", "4月1日", True), ("next_day", "十二月三十一日", "12月31日", True),
    ("next_day", "April 1", "April 1", True), ("next_day", "Apr 1", "April 1", True),
    ("next_day", "1 April", "April 1", True), ("next_day", "The answer is april 1st.", "April 1", True),
    ("next_day", "The day after March 31 is April 1.", "April 1", True), ("next_day", "April 1", "4月1日", True),
    ("next_day", "3月31日", "4月1日", False), ("next_day", "4月2日", "4月1日", False), ("next_day", "4月11日", "4月1日", False),
    ("next_day", "4月", "4月1日", False), ("next_day", "1", "4月1日", False), ("next_day", "", "4月1日", False),
    ("next_day", "4月1日或4月2日", "4月1日", False), ("next_day", "Apr. 1st", "April 1", True),
    ("next_day", "March 31", "April 1", False), ("next_day", "April 2", "April 1", False),
    ("next_day", "1 March", "March 31", False),
    # strings: up to spaces, punctuation, width and case
    ("copy", "花山水月", "花山水月", True), ("copy", "“花山水月”。", "花山水月", True), ("copy", "答案：花山水月", "花山水月", True),
    ("copy", "花山水", "花山水月", False), ("copy", "花山水月月", "花山水月", False), ("copy", "", "花山水月", False),
    ("copy", "KWQ", "kwq", True), ("copy", "k w q", "kwq", True), ("copy", "kwqx", "kwq", False),
    ("reverse", "月水山花", "月水山花", True), ("reverse", "花山水月", "月水山花", False), ("reverse", "olleh!", "olleh", True),
]


@pytest.mark.parametrize("family,completion,answer,correct", CASES)
def test_checker_on_hand_written_replies(family, completion, answer, correct):
    assert S.check_answer(family, completion, answer) is correct


def test_every_family_has_hand_written_cases_and_reward_is_the_checker():
    assert {c[0] for c in CASES} == set(S.FAMILIES)
    item = S.SkillItem("add", "zh", "23加45等于多少？", "68", "test")
    assert S.reward(item, "答案是68。") == 1.0 and S.reward(item, "69") == 0.0
    with pytest.raises(ValueError, match="unknown family"):
        S.check_answer("nope", "1", "1")


def test_families_interface():
    assert len(S.FAMILIES) >= 8
    assert list(S.FAMILIES)[:2] == ["copy", "compare"]  # easy first
    for name, fam in S.FAMILIES.items():
        assert fam.name == name and fam.description
        q, a = fam.generate(random.Random(0), "zh")
        assert q and a and fam.check(a, a)


@pytest.mark.parametrize("lang", ["zh", "en"])
def test_generated_items_are_consistent(lang):
    """Every generated item: its reference passes its checker, a wrong answer fails, the question survives the
    project's text normalisation unchanged (SFT reads normalised text), and it lands in the split it was made for."""
    for split in S.SPLITS:
        items = S.make_skills(split, 30, seed=1, lang=lang)
        for it in items:
            assert it.lang == lang and it.split == split
            assert S.check_answer(it.family, it.answer, it.answer), it
            assert S.check_answer(it.family, f"答案是{it.answer}。" if lang == "zh" else f"The answer is {it.answer}.",
                                  it.answer), it
            assert normalize(it.question) == it.question, it.question
            assert S.split_of(it.family, it.lang, it.question) == split
            assert len(it.question) <= 80 and len(it.answer) <= 12


def test_wrong_answers_fail_for_numeric_families():
    for it in S.make_skills("val", 20, seed=2, lang="both",
                            families=["compare", "mul", "add", "sub", "count_char", "word_problem", "add3",
                                      "zh_to_num"]):
        assert not S.check_answer(it.family, str(int(it.answer) + 1), it.answer), it


def test_known_answers():
    """Hand-computed answers for problems read back from their questions."""
    got = {}
    for it in S.make_skills("train", 400, seed=0, lang="zh"):
        got[it.question] = it.answer
    for q, a in got.items():
        if q.endswith("等于多少？") and "×" in q:
            x, y = q[:-5].split("×")
            assert a == str(int(x) * int(y))
        if q.startswith("1月1日的前一天"):
            assert a == "12月31日"


def test_deterministic():
    a = S.make_skills("train", 50, seed=3, lang="both")
    b = S.make_skills("train", 50, seed=3, lang="both")
    c = S.make_skills("train", 50, seed=4, lang="both")
    assert a == b
    assert a != c
    assert [it.lang for it in a[:4]] == ["zh", "en", "zh", "en"]
    fams = S.make_skills("val", 5, seed=3, families=["sub", "add"])
    assert [it.family for it in fams] == ["sub"] * 5 + ["add"] * 5


def test_no_test_problem_in_train_across_languages():
    """2,000+ problems per family and language: no canonical problem of test or val appears in train, whichever
    language or order it was written in, and each split's share is near its target."""
    keys = {s: set() for s in S.SPLITS}
    for split in S.SPLITS:
        for lang in ("zh", "en"):
            for it in S.make_skills(split, 2000 if split == "train" else 400, seed=5, lang=lang):
                keys[split].add(S.canonical_key(it.family, it.lang, it.question))
    assert not keys["train"] & keys["test"]
    assert not keys["train"] & keys["val"]
    assert not keys["val"] & keys["test"]
    # hashed families: about 10% of drawn problems are test
    rng = random.Random(0)
    for name in ("copy", "reverse", "count_char", "add3"):
        splits = [S.split_of(name, lang, S.FAMILIES[name].generate(rng, lang)[0]) for lang in ("zh", "en")
                  for _ in range(2000)]
        assert 0.07 < splits.count("test") / len(splits) < 0.13, name
        assert 0.07 < splits.count("val") / len(splits) < 0.13, name


def test_twins_share_a_split():
    """The zh and en wording of one problem, and its swapped twin where the operation commutes, share a key."""
    pairs = [("add", "zh", "23加45等于多少？", "en", "What is 45 + 23?"),
             ("mul", "zh", "23×4等于多少？", "en", "What is 23 times 4?"),
             ("mul", "zh", "4乘23等于几？", "en", "What is 23 × 4?"),
             ("compare", "zh", "哪个数更大：37还是52？", "en", "Which is larger: 52 or 37?"),
             ("num_to_zh", "zh", "把345写成中文数字。", "en", "Write 345 in Chinese numerals."),
             ("zh_to_num", "zh", "三百四十五用数字怎么写？", "en", "Write 三百四十五 in digits."),
             ("next_day", "zh", "3月31日的后一天是几月几日？", "en", "What date is the day after March 31?"),
             ("next_day", "zh", "12月30日再过3天是几月几日？", "en", "What date is it 3 days after December 30?"),
             ("word_problem", "zh", "小明有3个苹果，又买了5个，一共有几个？", "en",
              "Amy has 5 books and buys 3 more. How many books does Amy have now?")]
    for family, l1, q1, l2, q2 in pairs:
        assert S.canonical_key(family, l1, q1) == S.canonical_key(family, l2, q2), family
        assert S.split_of(family, l1, q1) == S.split_of(family, l2, q2)
    # not twins: subtraction does not commute, and "before" is not "after"
    assert S.canonical_key("sub", "zh", "68减45等于多少？") != S.canonical_key("sub", "zh", "45减68等于多少？")
    assert S.canonical_key("next_day", "zh", "3月31日的前一天是几月几日？") != \
        S.canonical_key("next_day", "zh", "3月31日的下一天是几月几日？")


def test_enumerable_families_have_exact_disjoint_splits():
    # mul: 764 distinct products of 1-99 and 2-9 (a×b == b×a); next_day: 365 dates × 4 offsets
    assert S.split_sizes("mul") == {"train": 612, "val": 76, "test": 76}
    assert S.split_sizes("next_day") == {"train": 1168, "val": 146, "test": 146}
    for family in ("mul", "next_day"):
        test = S.make_skills("test", 1000, families=[family], lang="zh")
        train = S.make_skills("train", 2000, families=[family], lang="zh")
        test_keys = {S.canonical_key(family, "zh", it.question) for it in test}
        assert len(test_keys) == len(test) == S.split_sizes(family)["test"]  # test holds each problem once
        assert not test_keys & {S.canonical_key(family, "zh", it.question) for it in train}
    # the multiplication table sits inside mul: a test product like 23×4 combines facts (3×4, 2×4) trained on
    table = {p for p in S.FAMILIES["mul"].space() if p[0] < 10}
    assert len(table) == 44 and (9, 9) in table and (7, 1) in table


def test_count_char_uses_corpus_words():
    words = ["天天向上", "人山人海", "hello", "一心一意", "不", "abc123"]
    items = S.make_skills("train", 40, seed=0, families=["count_char"], words=words, lang="zh")
    phrases = {S.FAMILIES["count_char"].parse(it.question, "zh")[0] for it in items}
    assert phrases <= {"天天向上", "人山人海"}  # Han-only, 2+ characters, no numeral characters (一)
    for it in items:
        phrase, ch = S.FAMILIES["count_char"].parse(it.question, "zh")
        assert it.answer == str(phrase.count(ch))
    en = S.make_skills("train", 10, seed=0, families=["count_char"], words=words, lang="en")
    assert {S.FAMILIES["count_char"].parse(it.question, "en")[0] for it in en} <= {"hello"}


def test_bad_arguments_are_named():
    with pytest.raises(ValueError, match="split"):
        S.make_skills("dev", 1)
    with pytest.raises(ValueError, match="lang"):
        S.make_skills("train", 1, lang="fr")
    with pytest.raises(ValueError, match="unknown family 'nope'"):
        S.make_skills("train", 1, families=["nope"])
    with pytest.raises(ValueError, match="cannot read a add"):
        S.split_of("add", "zh", "你好")


def test_jsonl_round_trip_is_minimind_chat(tmp_path):
    items = S.make_skills("val", 3, seed=0, lang="both")
    path = tmp_path / "skills.jsonl"
    assert S.write_skills_jsonl(items, path) == len(items)
    assert S.read_skills_jsonl(path) == items
    first = json.loads(path.read_text(encoding="utf-8").splitlines()[0])
    assert first["conversations"] == items[0].conversation()
    assert set(first) == {"conversations", "family", "answer", "lang", "split"}
    report = ChatReport(str(path))
    convs = read_chat_file(path, report)
    assert report.kept == len(items) and not report.rejected
    assert convs == [it.conversation() for it in items]  # the questions are already normalised


@pytest.mark.parametrize("line,key", [
    ("{not json", "not valid JSON"),
    ('["a list"]', "expected a JSON object"),
    ('{"conversations": [{"role": "user", "content": "1+1=?"}], "family": "dance", "answer": "2", "lang": "zh", '
     '"split": "train"}', "'family'"),
    ('{"conversations": [{"role": "user", "content": "1+1=?"}], "family": "add", "answer": "2", "lang": "fr", '
     '"split": "train"}', "'lang'"),
    ('{"conversations": [{"role": "user", "content": "1+1=?"}], "family": "add", "answer": "2", "lang": "zh", '
     '"split": "dev"}', "'split'"),
    ('{"conversations": [{"role": "user", "content": "1+1=?"}], "family": "add", "answer": "", "lang": "zh", '
     '"split": "train"}', "'answer'"),
    ('{"conversations": "1+1", "family": "add", "answer": "2", "lang": "zh", "split": "train"}', "'conversations'"),
    ('{"conversations": [{"role": "assistant", "content": "2"}], "family": "add", "answer": "2", "lang": "zh", '
     '"split": "train"}', "'conversations'"),
])
def test_read_rejects_a_bad_line_naming_path_line_and_key(tmp_path, line, key):
    good = json.dumps(S.make_skills("train", 1, families=["add"])[0].to_json(), ensure_ascii=False)
    path = tmp_path / "skills.jsonl"
    path.write_text(good + "\n\n" + good + "\n" + line + "\n", encoding="utf-8")
    with pytest.raises(ValueError) as e:
        S.read_skills_jsonl(path)
    assert f"{path}:4" in str(e.value) and key in str(e.value)


def test_write_is_atomic(tmp_path, monkeypatch):
    path = tmp_path / "skills.jsonl"
    S.write_skills_jsonl(S.make_skills("val", 2, families=["add"]), path)
    before = path.read_text(encoding="utf-8")

    class Boom:
        def to_json(self):
            raise RuntimeError("interrupted")

    with pytest.raises(RuntimeError):
        S.write_skills_jsonl([*S.make_skills("val", 2, families=["sub"]), Boom()], path)
    assert path.read_text(encoding="utf-8") == before
    assert [p.name for p in tmp_path.iterdir()] == ["skills.jsonl"]


def test_read_rejects_a_problem_moved_into_another_split(tmp_path):
    """A hand edit that relabels a test problem as train would leak it: the reader checks split_of."""
    test_item = S.make_skills("test", 1, families=["add"])[0]
    moved = dict(test_item.to_json(), split="train")
    path = tmp_path / "train.jsonl"
    S.write_skills_jsonl(S.make_skills("train", 2, families=["add"]), path)
    with open(path, "a", encoding="utf-8") as f:
        f.write(json.dumps(moved, ensure_ascii=False) + "\n")
    with pytest.raises(ValueError, match=rf"{path}:3: key 'split' is 'train' but this add problem belongs to 'test'"):
        S.read_skills_jsonl(path)
    # a question in the user's own wording cannot be placed: kept as it is
    own = {"conversations": [{"role": "user", "content": "一加一等于几？"}], "family": "add", "answer": "2",
           "lang": "zh", "split": "train"}
    path.write_text(json.dumps(own, ensure_ascii=False) + "\n", encoding="utf-8")
    assert S.read_skills_jsonl(path)[0].question == "一加一等于几？"
    # a file read as one split holds that split only
    path.write_text(json.dumps(test_item.to_json(), ensure_ascii=False) + "\n", encoding="utf-8")
    with pytest.raises(ValueError, match=rf"{path}:1: key 'split' is 'test'; this file holds 'train'"):
        S.read_skills_jsonl(path, "train")
    assert S.read_skills_jsonl(path, "test") == [test_item]


@pytest.mark.parametrize("op,a,b,lang,expected", [
    ("+", 23, 45, "zh", "个位3+5=8，十位2+4=6，答案：68"),
    ("+", 58, 67, "zh", "个位8+7=15，写5进1，十位5+6+1=12，写2进1，百位1，答案：125"),
    ("-", 52, 17, "zh", "个位2+10-7=5（借1），十位5-1-1=3，答案：35"),
    ("-", 502, 198, "en", "ones 2+10-8=4 (borrow 1), tens 0-1+10-9=0 (borrow 1), hundreds 5-1-1=3, answer: 304"),
    ("+", 999, 1, "en", "ones 9+1=10 write 0 carry 1, tens 9+0+1=10 write 0 carry 1, "
                        "hundreds 9+0+1=10 write 0 carry 1, thousands 1, answer: 1000"),
])
def test_column_solutions_by_hand(op, a, b, lang, expected):
    assert S._column_solution(op, a, b, lang) == expected


def test_worked_solutions_end_in_the_checked_answer(tmp_path):
    plain = S.make_skills("train", 40, seed=0, lang="both")
    worked = S.make_skills("train", 40, seed=0, lang="both", worked=True)
    assert [(i.question, i.answer) for i in plain] == [(i.question, i.answer) for i in worked]  # same problems
    with_solution = {i.family for i in worked if i.solution}
    assert with_solution == {"add", "sub", "mul", "add3", "word_problem"}
    for it in worked:
        reply = it.conversation()[1]["content"]
        assert S.check_answer(it.family, reply, it.answer), reply  # the checker reads only the final answer
        assert normalize(reply) == reply
        if it.solution:
            assert reply.endswith(f"答案：{it.answer}" if it.lang == "zh" else f"answer: {it.answer}")
            wrong = reply.rsplit(it.answer, 1)[0] + str(int(it.answer) + 1)
            assert not S.check_answer(it.family, wrong, it.answer)
    path = tmp_path / "worked.jsonl"
    S.write_skills_jsonl(worked, path)
    assert S.read_skills_jsonl(path) == worked
    assert "个位" in S.make_skills("val", 1, families=["add3"], worked=True)[0].conversation()[1]["content"]


def test_every_payload_reads_back_the_same_in_both_languages():
    """For every family and every wording: the parser recovers the payload the question was written from, so the
    zh and en questions of one problem always get one canonical key and one split."""
    rng = random.Random(7)
    for name, fam in S.FAMILIES.items():
        payloads = fam.space() if fam.space else []
        if name in ("copy", "reverse"):
            payloads = [("花山水月",), ("abc",), ("kwqx",)]
        elif name == "count_char":
            payloads = [("春天天气", "天"), ("strawberry", "r"), ("apple banana", "a")]
        elif name == "add3":
            payloads = [("+", 345, 678), ("-", 901, 109)]
        for p in rng.sample(payloads, min(60, len(payloads))):
            keys = set()
            for lang in ("zh", "en"):
                for _ in range(4):  # several draws of the wording
                    q, a = fam.render(p, lang, rng)
                    assert fam.parse(q, lang) == p, (name, lang, q)
                    keys.add(S.canonical_key(name, lang, q))
            assert len(keys) == 1, (name, p, keys)


def test_repeated_train_problems_alternate_languages():
    """A train list longer than its split repeats problems; with lang="both" each one is then seen in zh and en."""
    n = 2 * S.split_sizes("mul")["train"]
    items = S.make_skills("train", n, seed=0, lang="both", families=["mul"])
    assert len(items) == n
    langs_by_problem: dict = {}
    for it in items:
        langs_by_problem.setdefault(S.FAMILIES["mul"].parse(it.question, it.lang), set()).add(it.lang)
    assert len(langs_by_problem) == S.split_sizes("mul")["train"]  # every train problem, none other
    assert all(v == {"zh", "en"} for v in langs_by_problem.values())


@pytest.mark.parametrize("payload,lang,question,answer", [
    ((3, 31, 1), "zh", "3月31日的后一天是几月几日？", "4月1日"),
    ((12, 31, 1), "zh", "12月31日的后一天是几月几日？", "1月1日"),  # the year wraps
    ((2, 28, 1), "zh", "2月28日的后一天是几月几日？", "3月1日"),  # not a leap year
    ((3, 1, -1), "zh", "3月1日的前一天是几月几日？", "2月28日"),
    ((1, 1, -1), "zh", "1月1日的前一天是几月几日？", "12月31日"),
    ((12, 30, 3), "zh", "12月30日再过3天是几月几日？", "1月2日"),
    ((4, 29, 2), "zh", "4月29日再过2天是几月几日？", "5月1日"),
    ((3, 31, 1), "en", "What date is the day after March 31?", "April 1"),
    ((12, 31, 1), "en", "What date is the day after December 31?", "January 1"),
    ((3, 1, -1), "en", "What date is the day before March 1?", "February 28"),
    ((9, 29, 2), "en", "What date is it 2 days after September 29?", "October 1"),
])
def test_next_day_by_hand(payload, lang, question, answer):
    fam = S.FAMILIES["next_day"]
    questions = set()
    for seed in range(8):  # the day after has two wordings: find the one written here
        q, a = fam.render(payload, lang, random.Random(seed))
        assert a == answer and fam.parse(q, lang) == payload
        questions.add(q)
    assert question in questions
    assert S.check_answer("next_day", answer, answer)


@pytest.mark.parametrize("lang", ["zh", "en"])
def test_next_day_generated_answers_pass_and_neighbours_fail(lang):
    """2,000 drawn problems: the reference passes the checker (bare and in a sentence), the question reads back to
    its payload, and the date a day earlier or later than the answer fails."""
    fam, rng = S.FAMILIES["next_day"], random.Random(11)
    for _ in range(2000):
        q, a = fam.generate(rng, lang)
        m, d, k = fam.parse(q, lang)
        assert S._date_text(*S._shift_date(m, d, k), lang) == a, q
        assert S.check_answer("next_day", a, a) and S.check_answer("next_day", f"{q}\n答案：{a}", a), q
        for wrong in (k - 1, k + 1):  # a day earlier or later than the answer
            assert not S.check_answer("next_day", S._date_text(*S._shift_date(m, d, wrong), lang), a), (q, wrong)


@pytest.mark.parametrize("a,b,lang,expected", [
    (23, 4, "zh", "个位3×4=12，写2进1，十位2×4+1=9，答案：92"),
    (23, 4, "en", "ones 3×4=12 write 2 carry 1, tens 2×4+1=9, answer: 92"),
    (99, 9, "en", "ones 9×9=81 write 1 carry 8, tens 9×9+8=89 write 9 carry 8, hundreds 8, answer: 891"),
    (7, 3, "zh", "个位7×3=21，写1进2，十位2，答案：21"),
    (3, 2, "zh", "个位3×2=6，答案：6"),
    (50, 2, "zh", "个位0×2=0，十位5×2=10，写0进1，百位1，答案：100"),
    (7, 1, "en", "ones 7×1=7, answer: 7"),
])
def test_mul_solutions_by_hand(a, b, lang, expected):
    assert S.FAMILIES["mul"].solve((a, b), lang) == expected


def test_mul_worked_solution_is_right_for_every_problem():
    fam, rng = S.FAMILIES["mul"], random.Random(0)
    for p in fam.space():
        a, b = p
        assert 1 <= b <= 9 and a >= b and (b >= 2 or 2 <= a <= 9)
        for lang in ("zh", "en"):
            q, answer = fam.render(p, lang, rng)
            sol = fam.solve(p, lang)
            assert answer == str(a * b) and fam.parse(q, lang) == p
            assert sol.endswith(f"答案：{a * b}" if lang == "zh" else f"answer: {a * b}"), sol
            assert S.check_answer("mul", sol, answer) and normalize(sol) == sol
            assert not S.check_answer("mul", sol[:-len(answer)] + str(a * b + 1), answer)


def test_run_skills_worked_replies_in_train_only(tmp_path):
    """skills_worked: the train file's assistant turns are the worked solutions (and read back as such); val and
    test stay bare; the reference answer is the bare answer everywhere."""
    from minigpt.params import load_params

    P = load_params("clean", {}, skills_worked=True, run_dir=str(tmp_path / "run"))
    cfg = P.build(S.SkillsConfig)
    assert cfg.skills_worked is True and S.SkillsConfig().skills_worked is False
    cfg = S.SkillsConfig(skills_train_per_family=6, skills_eval_per_family=3, skills_lang="both", skills_worked=True)
    S.write_run_skills(tmp_path, cfg)
    train = S.load_run_skills(tmp_path, "train")
    assert train == S.make_skills("train", 6, lang="both", worked=True)
    text = (tmp_path / "skills" / "train.jsonl").read_text(encoding="utf-8")
    lines = [json.loads(line) for line in text.splitlines()]
    worked = [o for o in lines if o["family"] in ("add", "sub", "mul", "add3", "word_problem")]
    assert worked and all(o["conversations"][1]["content"] != o["answer"] for o in worked)
    assert all(o["conversations"][1]["content"].endswith(o["answer"]) for o in worked)
    assert {it.family for it in train if it.solution} == {"add", "sub", "mul", "add3", "word_problem"}
    for split in ("val", "test"):
        items = S.load_run_skills(tmp_path, split)
        assert items and not any(it.solution for it in items)
        assert all(it.conversation()[1]["content"] == it.answer for it in items)
    with pytest.raises(ValueError, match="skills_worked"):
        S.SkillsConfig(skills_worked="yes").validate()


def test_word_problem_solution_is_the_equation_then_its_column_arithmetic():
    assert S._solve_equation(("+", 36, 14), "zh") == "36+14：个位6+4=10，写0进1，十位3+1+1=5，答案：50"
    assert S._solve_equation(("-", 42, 17), "en") == \
        "42 - 17: ones 2+10-7=5 (borrow 1), tens 4-1-1=2, answer: 25"


def test_reference_reply_is_the_worked_solution_when_the_run_trains_on_them():
    val = S.make_skills("val", 2, families=["add", "copy"])
    add, copy = val[0], val[2]
    assert not add.solution  # val/test are stored bare
    assert S.reference_reply(add, worked=False) == add.answer
    worked = S.reference_reply(add, worked=True)
    assert worked.startswith("个位") and worked.endswith(f"答案：{add.answer}") and S.check_answer("add", worked, add.answer)
    assert S.reference_reply(copy, worked=True) == copy.answer  # a family without a worked solution
    train = S.make_skills("train", 1, families=["sub"], worked=True)[0]
    assert S.reference_reply(train, worked=False) == train.solution  # an item's own solution always wins
    assert S.REPLY_TOKENS >= 64  # a worked add3 solution is ~57 tokens with single-digit tokens
