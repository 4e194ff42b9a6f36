"""A MiniMind-style ``pretrain.jsonl`` of any size from the built-in corpora, with known duplicates.

The expansion, deterministic for a given seed:

- Pools: People's Daily (POS tags stripped) split into sentences at 。！？ (long documents are made of
  these) and the product-review lines (short documents).
- Each output line is, in order of the draws:
  * an exact duplicate (probability ``exact_rate``) of an earlier original line, picked uniformly from
    a reservoir of recent originals;
  * a near duplicate (``near_rate``) of an earlier original: characters edited at ``edit_rate`` per
    character (at least one edit), each edit a substitution, an insertion or a deletion with equal odds,
    new characters drawn from the corpus's own characters;
  * otherwise an original: with probability ``short_fraction`` a short document (2-3 review lines,
    joined by "，"), else a long one (4-20 news sentences, paragraphs of 2-5 sentences split by "\\n").
  Recombining sentences makes the originals distinct from each other: two originals share a sentence
  now and then, but sharing most of their text (a real near duplicate) has a negligible chance.
- Ground truth beside it (``<name>.truth.jsonl``): one line per injected duplicate,
  ``{"line": L, "kind": "exact"|"near", "of": M, "edits": E}`` (1-based line numbers; M is an original).

Memory is bounded (the pools, ~20 MB, and a reservoir of 4096 recent originals); lines are streamed to
a ``.partial`` file renamed at the end, so a stopped run never leaves a file that looks complete.

    python -m minigpt.bench.corpus out.jsonl --size-mb 50
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import random
import re
import sys
from dataclasses import asdict, dataclass
from json.encoder import encode_basestring as _encode_str
from pathlib import Path

logger = logging.getLogger(__name__)

RESERVOIR = 4096  # recent originals a duplicate may copy
_SENTENCE_END = re.compile(r"(?<=[。！？])")


@dataclass(frozen=True)
class CorpusSpec:
    """What the generated corpus depends on (its cache key)."""

    size_mb: float = 1024.0
    seed: int = 0
    exact_rate: float = 0.03
    near_rate: float = 0.03
    edit_rate: float = 0.01  # edits per character of a near duplicate (at least one)
    short_fraction: float = 0.3

    def key(self) -> str:
        return "_".join(f"{k}{v:g}" if isinstance(v, float) else f"{k}{v}" for k, v in asdict(self).items())


def _pools() -> tuple[list[str], list[str], str]:
    """(news sentences, review lines, the characters to draw edits from)."""
    from ..data.sources import peoples_daily_path, review_paths, strip_pos_tags

    news: list[str] = []
    with open(peoples_daily_path(), encoding="utf-8", errors="replace") as f:
        for line in f:
            text = strip_pos_tags(line).strip()
            news += [s for s in _SENTENCE_END.split(text) if len(s) >= 6]
    reviews: list[str] = []
    for p in review_paths():
        with open(p, encoding="utf-8", errors="replace") as f:
            reviews += [s for s in (ln.strip() for ln in f) if 6 <= len(s) <= 60]
    alphabet = "".join(sorted({c for s in news[:20000] for c in s if "\u4e00" <= c <= "\u9fff"}))
    return news, reviews, alphabet


def _original(rng: random.Random, news: list[str], reviews: list[str], short_fraction: float) -> str:
    if rng.random() < short_fraction:
        return "，".join(rng.choice(reviews) for _ in range(rng.randint(2, 3)))
    sents = [rng.choice(news) for _ in range(rng.randint(4, 20))]
    paras, i = [], 0
    while i < len(sents):
        k = rng.randint(2, 5)
        paras.append("".join(sents[i:i + k]))
        i += k
    return "\n".join(paras)


def edit_text(rng: random.Random, text: str, rate: float, alphabet: str) -> tuple[str, int]:
    """``text`` with round(rate * len) (at least one) random substitutions, insertions or deletions;
    returns (edited text, number of edits)."""
    chars = list(text)
    n = max(1, round(rate * len(chars)))
    for _ in range(n):
        op = rng.randrange(3)
        i = rng.randrange(len(chars))
        if op == 0:
            chars[i] = rng.choice(alphabet)
        elif op == 1:
            chars.insert(i, rng.choice(alphabet))
        elif len(chars) > 2 and chars[i] != "\n":
            del chars[i]
        else:
            chars[i] = rng.choice(alphabet)
    return "".join(chars), n


def generate_corpus(path: str | os.PathLike, spec: CorpusSpec = CorpusSpec()) -> dict:
    """Write ``path`` (about ``spec.size_mb`` MB of ``{"text": ...}`` lines) and its truth sidecar;
    returns counts. The same spec always gives the same bytes."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    truth_path = truth_path_for(path)
    news, reviews, alphabet = _pools()
    rng = random.Random(spec.seed)
    target = int(spec.size_mb * 1e6)
    counts = {"lines": 0, "exact": 0, "near": 0, "original": 0, "bytes": 0}
    recent: list[tuple[int, str]] = []  # (line, text) of recent originals
    tmp, ttmp = path.with_name(path.name + ".partial"), truth_path.with_name(truth_path.name + ".partial")
    with open(tmp, "w", encoding="utf-8", buffering=1 << 22) as f, \
            open(ttmp, "w", encoding="utf-8", buffering=1 << 20) as tf:
        while counts["bytes"] < target:
            lineno = counts["lines"] + 1
            r = rng.random()
            if recent and r < spec.exact_rate + spec.near_rate:
                of, src = recent[rng.randrange(len(recent))]
                kind = "exact" if r < spec.exact_rate else "near"
                text, edits = (src, 0) if kind == "exact" else edit_text(rng, src, spec.edit_rate, alphabet)
                tf.write(json.dumps({"line": lineno, "kind": kind, "of": of, "edits": edits}) + "\n")
            else:
                kind, text = "original", _original(rng, news, reviews, spec.short_fraction)
                if len(recent) < RESERVOIR:
                    recent.append((lineno, text))
                else:
                    recent[rng.randrange(RESERVOIR)] = (lineno, text)
            line = '{"text": ' + _encode_str(text) + "}\n"
            f.write(line)
            counts["bytes"] += len(line.encode("utf-8"))
            counts["lines"] += 1
            counts[kind] += 1
    os.replace(ttmp, truth_path)
    os.replace(tmp, path)
    logger.info("generated %s: %s", path, counts)
    return counts


def truth_path_for(path: str | os.PathLike) -> Path:
    path = Path(path)
    return path.with_name(path.stem + ".truth.jsonl")


def cached_corpus(folder: str | os.PathLike, spec: CorpusSpec) -> Path:
    """The corpus of ``spec`` under ``folder`` (named by the spec), generated only when missing."""
    path = Path(folder) / f"pretrain_{spec.key()}.jsonl"
    if not (path.is_file() and truth_path_for(path).is_file()):
        generate_corpus(path, spec)
    return path


def read_truth(path: str | os.PathLike) -> dict[int, tuple[str, int]]:
    """line -> (kind, line it duplicates) from a truth sidecar."""
    out: dict[int, tuple[str, int]] = {}
    with open(path, encoding="utf-8") as f:
        for ln in f:
            d = json.loads(ln)
            out[d["line"]] = (d["kind"], d["of"])
    return out


def _read_rejects(rejects_file: str | os.PathLike, source: str) -> tuple[dict[str, dict[int, int]], set[int]]:
    """{reason: {line: line it duplicates}} for the duplicate rejects of ``source``, and every rejected line."""
    flagged: dict[str, dict[int, int]] = {"exact_duplicate": {}, "near_duplicate": {}}
    rejected: set[int] = set()
    with open(rejects_file, encoding="utf-8") as f:
        for ln in f:
            d = json.loads(ln)
            if os.path.abspath(d["file"]) != os.path.abspath(source):
                continue
            rejected.add(d["line"])
            if d["reason"] in flagged:
                m = _OF_RE.search(d.get("detail", ""))
                flagged[d["reason"]][d["line"]] = int(m.group(1)) if m else 0
    return flagged, rejected


_OF_RE = re.compile(r"(?:as|of) .*:(\d+)")


def _texts_at(path: str | os.PathLike, lines: set[int]) -> dict[int, str]:
    """The texts of the given lines of a pretrain JSONL file (lines that are not a text document: "")."""
    out: dict[int, str] = {}
    with open(path, "rb") as f:
        for i, ln in enumerate(f, 1):
            if i in lines:
                try:
                    out[i] = str(json.loads(ln.decode("utf-8", "replace")).get("text", ""))
                except (ValueError, AttributeError):
                    out[i] = ""
    return out


def _similar(a: str, b: str, bar: float) -> bool:
    """Is the exact character-shingle Jaccard similarity of two texts (shingles as near dedup takes them) >= bar."""
    from ..data.clean.dedup import dedup_key, shingle_size

    a, b = dedup_key(a), dedup_key(b)
    n = shingle_size(len(a), 5)
    sa, sb = {a[i:i + n] for i in range(max(1, len(a) - n + 1))}, {b[i:i + n] for i in range(max(1, len(b) - n + 1))}
    return len(sa & sb) / max(1, len(sa | sb)) >= bar


def dedup_scores(truth_file: str | os.PathLike, rejects_file: str | os.PathLike, source: str,
                 threshold: float = 0.8) -> dict:
    """Recall and precision of the cleaning run's duplicate rejects against the injected truth.

    Recall counts the injected duplicates whose original was kept (an original rejected by a quality filter
    leaves nothing to be a duplicate of) that were rejected as a duplicate of either kind. A flag is right when
    the line was injected as a duplicate; a flag that was not injected (``not_injected``) is a false positive
    only when the two texts are not actually similar (exact shingle Jaccard under the verification bar at
    ``threshold``; two originals can share a review line or most of a short text by chance).
    """
    from ..data.clean.dedup import verify_margin

    truth = read_truth(truth_file)
    flagged, rejected = _read_rejects(rejects_file, source)
    extra = {r: {ln: of for ln, of in f.items() if ln not in truth} for r, f in flagged.items()}
    texts = _texts_at(source, {x for f in extra.values() for pair in f.items() for x in pair})
    bar = threshold - verify_margin(128, threshold)
    out: dict = {}
    anyflag = set(flagged["exact_duplicate"]) | set(flagged["near_duplicate"])
    for kind, reason in (("exact", "exact_duplicate"), ("near", "near_duplicate")):
        want = {ln for ln, (k, of) in truth.items() if k == kind and of not in rejected}
        got = flagged[reason]
        fp = sum(1 for ln, of in extra[reason].items() if not _similar(texts.get(ln, ""), texts.get(of, "?"), bar))
        out[kind] = {"injected": len(want), "flagged": len(got), "recall": round(len(want & anyflag) / max(1, len(want)), 4),
                     "not_injected": len(extra[reason]), "false_positives": fp,
                     "precision": round(1 - fp / max(1, len(got)), 4)}
    return out


# --------------------------------------------------------------------------- the make bench case


def _cpu_seconds() -> float:
    """CPU seconds of this process and of its finished children (the cleaning workers)."""
    import resource

    a, b = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return a.ru_utime + a.ru_stime + b.ru_utime + b.ru_stime


def run_stage(stage: str, src: str, out: str, near: bool = False, train_mb: float = 100.0) -> dict:
    """One measured step on the corpus, in this process: ``clean`` (01's run_cleaning) or ``tokenize``
    (02's tokenizer training on ``out``'s cleaned data and encoding to token files)."""
    import time

    t0, c0 = time.perf_counter(), _cpu_seconds()
    if stage == "clean":
        from ..data.clean import CleanConfig, run_cleaning

        stats = run_cleaning(CleanConfig(data_files=[src], near_dedup=near, progress=False), out, resume=False)
        mb = os.path.getsize(src) / 1e6
        res = {"dedup": dedup_scores(truth_path_for(src), Path(out) / "rejects.jsonl", src),
               "kept": stats["kept"]["train"] + stats["kept"]["val"], "rejected": stats["rejected_total"]}
    else:
        from ..data.packing import pack_corpus
        from ..data.tokenizer import TokenizerConfig, build_tokenizer

        cfg = TokenizerConfig(retrain_tokenizer=True, tokenizer_train_mb=train_mb)
        tok = build_tokenizer(out, Path(out) / "tokenizer", cfg)
        t1, c1 = time.perf_counter(), _cpu_seconds()
        meta = pack_corpus(out, tok, Path(out) / "tokens", resume=False)
        mb = sum(m["num_bytes"] for m in meta["splits"].values()) / 1e6
        t2, c2 = time.perf_counter(), _cpu_seconds()
        res = {"train_s": round(t1 - t0, 1), "train_cpu_s": round(c1 - c0, 1), "encode_s": round(t2 - t1, 1),
               "encode_cpu_s": round(c2 - c1, 1), "encode_mb_per_s": round(mb / max(t2 - t1, 1e-9), 2),
               "encode_cpu_s_per_mb": round((c2 - c1) / mb, 3),
               "tokens": sum(m["num_tokens"] for m in meta["splits"].values())}
    wall, cpu = time.perf_counter() - t0, _cpu_seconds() - c0
    return {"stage": stage, "near_dedup": near, "mb": round(mb, 1), "wall_s": round(wall, 1),
            "mb_per_s": round(mb / max(wall, 1e-9), 2), "cpu_s": round(cpu, 1),
            "cpu_s_per_mb": round(cpu / mb, 3), **res}


def measure_stage(args: list[str]) -> dict:
    """``run_stage`` in a subprocess, with the peak RSS of its process tree (workers included) sampled."""
    import subprocess
    import sys

    import psutil

    proc = subprocess.Popen([sys.executable, "-m", "minigpt.bench.corpus", "--stage", *args],
                            stdout=subprocess.PIPE, text=True)
    ps, peak = psutil.Process(proc.pid), 0
    while proc.poll() is None:
        try:
            tree = [ps, *ps.children(recursive=True)]
            peak = max(peak, sum(p.memory_info().rss for p in tree if p.is_running()))
        except psutil.Error:
            pass
        try:
            proc.wait(0.2)
        except subprocess.TimeoutExpired:
            pass
    out = proc.stdout.read() if proc.stdout else ""
    if proc.returncode:
        return {"error": f"stage {args} exited with {proc.returncode}"}
    return {**json.loads(out.strip().splitlines()[-1]), "peak_rss_mb": round(peak / 1e6)}


def bench_corpus(quick: bool, out_dir: str | os.PathLike, size_mb: float | None = None) -> dict:
    """The gigabyte case: generate (cached by its spec), clean with near dedup off and on, then train the
    tokenizer and encode; each step in its own process, with wall time, MB/s, CPU s/MB and peak RSS."""
    spec = CorpusSpec(size_mb=size_mb or (50.0 if quick else 1024.0))
    folder = Path(out_dir) / "corpus"
    src = cached_corpus(folder, spec)
    res: dict = {"spec": asdict(spec), "file": str(src), "bytes": src.stat().st_size, "cpu_count": os.cpu_count()}
    for near in (False, True):
        res["clean_near" if near else "clean"] = measure_stage(
            ["clean", str(src), str(folder / f"clean_{int(near)}"), "--near", str(int(near))])
    res["tokenize"] = measure_stage(["tokenize", str(src), str(folder / "clean_1")])
    return res


def corpus_lines(r: dict) -> list[str]:
    """The case's rows for the bench table."""
    lines = ["", f"corpus {r['bytes'] / 1e6:.0f} MB ({r['file']})",
             "  step              MB/s   wall s   CPU s/MB  peak RSS MB  dedup (exact / near: recall, precision)"]
    for key in ("clean", "clean_near", "tokenize"):
        s = r.get(key, {})
        if "error" in s:
            lines.append(f"  {key:<15} ERROR {s['error']}")
            continue
        d = s.get("dedup")
        dd = f"{d['exact']['recall']:.3f}, {d['exact']['precision']:.3f} / {d['near']['recall']:.3f}, " \
             f"{d['near']['precision']:.3f}" if d else f"encode {s['encode_mb_per_s']} MB/s, " \
             f"{s['encode_cpu_s_per_mb']} CPU s/MB; tokenizer training {s['train_s']} s"
        lines.append(f"  {key:<15} {s['mb_per_s']:>7.2f} {s['wall_s']:>8.1f} {s['cpu_s_per_mb']:>10.3f} "
                     f"{s['peak_rss_mb']:>12}  {dd}")
    return lines


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m minigpt.bench.corpus", description=__doc__.split("\n\n")[0])
    ap.add_argument("out", help="the .jsonl to write (its truth goes beside it as .truth.jsonl)")
    ap.add_argument("--size-mb", type=float, default=1024.0)
    ap.add_argument("--quick", action="store_true", help="50 MB")
    ap.add_argument("--seed", type=int, default=0)
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["--stage"]:  # one measured step (see measure_stage): stage src out [--near 0|1]
        stage, src, out = argv[1:4]
        near = argv[4:6] == ["--near", "1"]
        print(json.dumps(run_stage(stage, src, out, near)))
        return 0
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    spec = CorpusSpec(size_mb=50.0 if args.quick else args.size_mb, seed=args.seed)
    print(json.dumps(generate_corpus(args.out, spec)))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
