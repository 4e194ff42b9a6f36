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
    ("mul_table", "3×7=21", "21", True), ("mul_table", "二十一", "21", True), ("mul_table", "3×7=20", "21", False),
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
    # weekdays: 星期三 == 周三 == 礼拜三, 星期日 == 星期天 == 周日 == 礼拜天, English case-insensitive
    ("next_weekday", "星期三", "星期三", True), ("next_weekday", "周三", "星期三", True),
    ("next_weekday", "礼拜三。", "星期三", True), ("next_weekday", "星期天", "星期日", True),
    ("next_weekday", "周日", "星期日", True), ("next_weekday", "wednesday", "Wednesday", True),
    ("next_weekday", "It is WEDNESDAY.", "Wednesday", True), ("next_weekday", "星期二的下一天是星期三。", "星期三", True),
    ("next_weekday", "星期二", "星期三", False), ("next_weekday", "三", "星期三", False), ("next_weekday", "", "星期三", False),
    ("next_weekday", "Thursday", "Wednesday", False),
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
                            families=["compare", "mul_table", "add", "sub", "count_char", "word_problem", "add3",
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
        if q.startswith("星期二的下一天"):
            assert a == "星期三"
        if q.startswith("星期日的下一天") or q.startswith("星期日的后一天"):
            assert a == "星期一"
        if q.startswith("星期一的前一天"):
            assert a == "星期日"


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
             ("mul_table", "zh", "3×7等于多少？", "en", "What is 7 times 3?"),
             ("compare", "zh", "哪个数更大：37还是52？", "en", "Which is larger: 52 or 37?"),
             ("num_to_zh", "zh", "把345写成中文数字。", "en", "Write 345 in Chinese numerals."),
             ("zh_to_num", "zh", "三百四十五用数字怎么写？", "en", "Write 三百四十五 in digits."),
             ("next_weekday", "zh", "星期二的下一天是星期几？", "en", "What day comes after Tuesday?"),
             ("next_weekday", "zh", "星期五再过3天是星期几？", "en", "What day is it 3 days after Friday?"),
             ("word_problem", "zh", "小明有3个苹果，又买了5个，一共有几个？", "en",
              "Amy has 5 books and buys 3 more. How many books does Amy have now?")]
    for family, l1, q1, l2, q2 in pairs:
        assert S.canonical_key(family, l1, q1) == S.canonical_key(family, l2, q2), family
        assert S.split_of(family, l1, q1) == S.split_of(family, l2, q2)
    # not twins: subtraction does not commute, and "before" is not "after"
    assert S.canonical_key("sub", "zh", "68减45等于多少？") != S.canonical_key("sub", "zh", "45减68等于多少？")
    assert S.canonical_key("next_weekday", "zh", "星期二的前一天是星期几？") != \
        S.canonical_key("next_weekday", "zh", "星期二的下一天是星期几？")


def test_small_families_still_have_disjoint_nonempty_splits():
    sizes = S.split_sizes("mul_table")
    assert sizes == {"train": 37, "val": 4, "test": 4}  # 45 distinct products of the 9x9 table (a×b == b×a)
    assert all(v >= 1 for v in S.split_sizes("next_weekday").values())
    test = S.make_skills("test", 100, families=["mul_table"], lang="zh")
    train = S.make_skills("train", 500, families=["mul_table"], lang="zh")
    assert 4 <= len(test) <= 8 and len(train) == 500  # train repeats its 37 products; test holds each once
    test_keys = {S.canonical_key("mul_table", "zh", it.question) for it in test}
    assert len(test_keys) == 4
    assert not test_keys & {S.canonical_key("mul_table", "zh", it.question) for it in train}
    assert len({it.question for it in test}) == len(test)


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
    assert with_solution == {"add", "sub", "add3", "word_problem"}
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
    items = S.make_skills("train", 300, seed=0, lang="both", families=["next_weekday"])
    assert len(items) == 300
    langs_by_problem: dict = {}
    for it in items:
        langs_by_problem.setdefault(S.FAMILIES["next_weekday"].parse(it.question, it.lang), set()).add(it.lang)
    assert len(langs_by_problem) == S.split_sizes("next_weekday")["train"]  # every train problem, none other
    assert all(v == {"zh", "en"} for v in langs_by_problem.values())
