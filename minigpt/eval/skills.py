"""The built-in skills, scored by generation: each model answers held-out problems and the family's checker
(minigpt.data.skills.check_answer, the same one RL rewards with) says whether the final answer is right.

- greedy pass@1: one greedy reply per problem, accuracy with its Wilson 95% interval;
- sampled pass@k (samples=k > 0): k replies per problem at `temperature`, and pass@k by the unbiased estimator
  of Chen et al. 2021 with n = k samples, which at n == k is "at least one of the k samples is right".
  pass@k above pass@1 is the headroom reinforcement learning can turn into greedy accuracy.

Generation is the project's batched decoder (TextGenerator.generate_texts over the chat template), one call per
chunk of `batch_size` prompts, each row stopping at <|im_end|>.

Results of a run live in runs/<run>/eval/skills.json, one entry per stage keyed by the checkpoint's SHA-256 and the
settings, so a stage that did not change is not evaluated again.
"""
from __future__ import annotations

import hashlib
import json
import logging
from pathlib import Path
from typing import Any, Callable, Sequence

from ..atomic import atomic_write_json
from ..data.skills import REPLY_TOKENS
from .scoring import mean_of_rates_interval, pass_at_k, wilson_interval

logger = logging.getLogger(__name__)

SKILLS = Path("eval") / "skills.json"
STAGE_ORDER = ("untrained", "pretrain", "sft", "dpo", "rl")
EXAMPLES_PER_FAMILY = 3  # replies kept in skills.json per family and stage, to read what the model wrote


def _prompt_messages(item: Any) -> list[dict]:
    """The dialogue up to the reply the model must write: the item's messages without a closing assistant turn."""
    msgs = list(item.messages())
    while msgs and msgs[-1].get("role") == "assistant":
        msgs.pop()
    if not msgs:
        raise ValueError(f"skill item {item.question!r}: its messages hold no user turn to answer")
    return msgs


def _generate(gen: Any, prompts: list[list[int]], cfg: Any, batch_size: int) -> list[str]:
    """Replies to token-id prompts, one batched generate_texts call per chunk of batch_size."""
    out: list[str] = []
    for i in range(0, len(prompts), batch_size):
        out += [t.strip() for t in gen.generate_texts(prompts[i:i + batch_size], cfg)]
    return out


def _add_sampled(families: dict[str, dict[str, Any]], generate: Callable, gen: Any, items: Sequence[Any],
                 prompts: list[list[int]], cfg: Any, samples: int, sample_per_family: int, batch_size: int) -> None:
    """Sampled pass@k into `families` (in place): each chosen prompt repeated `samples` times in a row, one seeded
    generator for the whole call; only the first sample_per_family problems of a family when that is > 0."""
    from ..data.skills import check_answer

    seen: dict[str, int] = {}
    chosen = []
    for j, it in enumerate(items):
        seen[it.family] = seen.get(it.family, 0) + 1
        if not sample_per_family or seen[it.family] <= sample_per_family:
            chosen.append(j)
    replies = generate(gen, [prompts[j] for j in chosen for _ in range(samples)], cfg, max(batch_size, 1))
    passk: dict[str, list[float]] = {}
    for jj, j in enumerate(chosen):
        it = items[j]
        c = sum(bool(check_answer(it.family, r, it.answer)) for r in replies[jj * samples:(jj + 1) * samples])
        passk.setdefault(it.family, []).append(pass_at_k(samples, c, samples))
        families[it.family]["sample_correct"] = families[it.family].get("sample_correct", 0) + c
    for fam, vals in passk.items():
        families[fam].update({"k": samples, "sampled_n": len(vals), "pass@k": sum(vals) / len(vals),
                              "sampled_pass@1": families[fam]["sample_correct"] / (samples * len(vals))})


def evaluate_skills(model: Any, tokenizer: Any, items: Sequence[Any], *, greedy: bool = True, samples: int = 0,
                    temperature: float = 1.0, max_new_tokens: int = REPLY_TOKENS, batch_size: int = 64,
                    seed: int = 0, sample_per_family: int = 0) -> dict[str, Any]:
    """Score `items` (SkillItems) by generation; see the module docstring. sample_per_family > 0 draws the samples
    for the first that many problems of each family only (k samples cost k greedy replies).

    Returns {"families": {family: {n, correct, pass@1, ci95[, samples, k, pass@k]}}, "mean": {pass@1, ci95, n,
    correct[, pass@k]}, "settings": {...}, "completions": [{family, question, answer, completion, correct}]
    (greedy), "examples": the first few completions per family}. The mean is over families (each family counts
    once); its interval is mean_of_rates_interval's (each family's binomial uncertainty, averaged)."""
    from ..data.skills import check_answer
    from ..infer.generate import GenerationConfig, TextGenerator

    if not items:
        raise ValueError("evaluate_skills: no items to score")
    if samples < 0 or batch_size < 1 or max_new_tokens < 1:
        raise ValueError(f"evaluate_skills: expected samples >= 0, batch_size >= 1, max_new_tokens >= 1; got "
                         f"{samples}, {batch_size}, {max_new_tokens}")
    was_training = model.training
    model.eval()
    gen = TextGenerator(model, tokenizer)
    greedy_cfg = GenerationConfig(do_sample=False, max_new_tokens=max_new_tokens, repetition_penalty=1.0)
    prompts = [gen.chat_prompt_ids(_prompt_messages(it), greedy_cfg) for it in items]
    families: dict[str, dict[str, Any]] = {}
    for it in items:
        families.setdefault(it.family, {"n": 0, "correct": 0})["n"] += 1
    completions: list[dict[str, Any]] = []
    try:
        if greedy:
            replies = _generate(gen, prompts, greedy_cfg, batch_size)
            for it, reply in zip(items, replies):
                ok = bool(check_answer(it.family, reply, it.answer))
                families[it.family]["correct"] += ok
                completions.append({"family": it.family, "question": it.question, "answer": it.answer,
                                    "completion": reply, "correct": ok})
        if samples:
            cfg = GenerationConfig(do_sample=True, temperature=temperature, top_k=0, top_p=1.0,
                                   max_new_tokens=max_new_tokens, seed=seed)
            _add_sampled(families, _generate, gen, items, prompts, cfg, samples, sample_per_family, batch_size)
    finally:
        model.train(was_training)
    for fam in families.values():
        if greedy:
            fam["pass@1"] = fam["correct"] / fam["n"]
            fam["ci95"] = list(wilson_interval(fam["correct"], fam["n"]))
    mean: dict[str, Any] = {"families": len(families)}
    if greedy:
        n, c = sum(f["n"] for f in families.values()), sum(f["correct"] for f in families.values())
        # the mean over families and its interval (mean_of_rates_interval); n and correct are the pooled counts
        mean.update(n=n, correct=c, ci95=list(mean_of_rates_interval([(f["correct"], f["n"]) for f in families.values()])),
                    **{"pass@1": sum(f["pass@1"] for f in families.values()) / len(families)})
    if samples:
        mean.update(k=samples, **{"pass@k": sum(f["pass@k"] for f in families.values()) / len(families)})
    examples = [c for fam in families for c in [x for x in completions if x["family"] == fam][:EXAMPLES_PER_FAMILY]]
    return {"families": families, "mean": mean, "completions": completions, "examples": examples,
            "settings": {"greedy": greedy, "samples": samples, "temperature": temperature,
                         "max_new_tokens": max_new_tokens, "seed": seed, "sample_per_family": sample_per_family,
                         "pass@k": "unbiased estimator (Chen et al. 2021) with n = k samples per problem"}}


def _cell(fam: dict[str, Any] | None, key: str = "pass@1") -> str:
    if not fam or key not in fam:
        return "—"
    if key == "pass@1":
        return f"{fam['pass@1']:.2f} [{fam['ci95'][0]:.2f}, {fam['ci95'][1]:.2f}]"
    return f"{fam[key]:.2f}"


def ordered_stages(names: Sequence[str]) -> list[str]:
    """Stage names in the order of the training chain (untrained, pretrain, sft, dpo, rl), others after."""
    return [s for s in STAGE_ORDER if s in names] + [s for s in names if s not in STAGE_ORDER]


def format_skills_table(results_by_stage: dict[str, dict]) -> str:
    """Markdown: one row per family (and the mean), one column per stage, cells "0.85 [0.80, 0.89]" (greedy pass@1
    with its Wilson 95% interval); then sampled pass@k per stage where it was measured."""
    stages = ordered_stages(list(results_by_stage))
    if not stages:
        return "*No skills evaluated.*\n"
    fams = list(dict.fromkeys(f for s in stages for f in results_by_stage[s]["families"]))
    n = {f: next(results_by_stage[s]["families"][f]["n"] for s in stages if f in results_by_stage[s]["families"])
         for f in fams}
    lines = ["| family | n | " + " | ".join(stages) + " |", "| --- | --- |" + " --- |" * len(stages)]
    for f in fams:
        lines.append(f"| {f} | {n[f]} | " + " | ".join(_cell(results_by_stage[s]["families"].get(f))
                                                       for s in stages) + " |")
    lines.append("| **mean** | " + str(sum(n.values())) + " | " + " | ".join(
        _cell(results_by_stage[s]["mean"]) for s in stages) + " |")
    sampled = [s for s in stages if "pass@k" in results_by_stage[s]["mean"]]
    if sampled:
        k = results_by_stage[sampled[0]]["mean"]["k"]
        lines += ["", f"Sampled pass@{k} ({k} samples per problem, temperature "
                      f"{results_by_stage[sampled[0]]['settings']['temperature']}):", "",
                  "| family | n | " + " | ".join(sampled) + " |", "| --- | --- |" + " --- |" * len(sampled)]
        for f in fams:
            ns = {results_by_stage[s]["families"][f].get("sampled_n") for s in sampled
                  if f in results_by_stage[s]["families"]}
            lines.append(f"| {f} | {'/'.join(str(x) for x in sorted(ns, key=str))} | " + " | ".join(
                _cell(results_by_stage[s]["families"].get(f), "pass@k")
                                                  for s in sampled) + " |")
        lines.append("| **mean** | | " + " | ".join(_cell(results_by_stage[s]["mean"], "pass@k") for s in sampled) + " |")
    return "\n".join(lines) + "\n"


# ---- a run's skills.json


def settings_key(settings: dict[str, Any]) -> str:
    return hashlib.sha256(json.dumps(settings, sort_keys=True).encode()).hexdigest()[:16]


def read_skills(run_dir: str | Path) -> dict[str, Any]:
    """runs/<run>/eval/skills.json ({"stages": {}} when there is none); a malformed file is an error naming it."""
    path = Path(run_dir) / SKILLS
    if not path.is_file():
        return {"stages": {}}
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except ValueError as e:
        raise ValueError(f"{path}: not valid JSON ({e}); delete it to evaluate the skills again") from None
    if not isinstance(data, dict) or not isinstance(data.get("stages"), dict):
        raise ValueError(f"{path}: expected an object with a 'stages' object; delete it to evaluate the skills again")
    for name, entry in data["stages"].items():
        if not isinstance(entry, dict) or not {"sha256", "settings_key", "result"} <= set(entry):
            raise ValueError(f"{path}: stages.{name}: expected keys sha256, settings_key, result")
    return data


def skills_by_stage(run_dir: str | Path) -> dict[str, dict]:
    """stage -> evaluate_skills' result, as stored in skills.json."""
    return {k: v["result"] for k, v in read_skills(run_dir)["stages"].items()}


def evaluate_run_skills(run_dir: str | Path, models: dict[str, tuple[Any, Any, str]], items: Sequence[Any],
                        settings: dict[str, Any], sample_stages: Sequence[str] = ("sft", "dpo", "rl", "checkpoint"),
                        progress: Callable[[str], None] = logger.info) -> dict[str, dict]:
    """Score each model (stage -> (model, tokenizer, checkpoint sha256)) on `items` unless skills.json already
    holds that stage for the same checkpoint and settings; sampled pass@k only for `sample_stages`.
    Writes skills.json (atomic) after each stage and returns stage -> result."""
    run_dir = Path(run_dir)
    data = read_skills(run_dir)
    data["stages"] = {k: v for k, v in data["stages"].items() if k in models}  # a stage whose model is gone
    for i, (stage, (model, tok, sha)) in enumerate(models.items(), 1):
        opts = dict(settings, samples=settings.get("samples", 0) if stage in sample_stages else 0)
        key = settings_key({**opts, "n_items": len(items),
                            "items": hashlib.sha256("".join(f"{it.family}\t{it.question}\t{it.answer}\n"
                                                            for it in items).encode()).hexdigest()})
        entry = data["stages"].get(stage)
        if entry and entry["sha256"] == sha and entry["settings_key"] == key:
            progress(f"skills [{i}/{len(models)}] {stage:<10} unchanged checkpoint: kept from {SKILLS}")
            continue
        r = evaluate_skills(model, tok, items, **opts)
        r.pop("completions")
        data["stages"][stage] = {"sha256": sha, "settings_key": key, "result": r}
        atomic_write_json(run_dir / SKILLS, data)
        extra = f", pass@{r['mean']['k']} {r['mean']['pass@k']:.3f}" if "pass@k" in r["mean"] else ""
        progress(f"skills [{i}/{len(models)}] {stage:<10} mean pass@1 {r['mean']['pass@1']:.3f} "
                 f"[{r['mean']['ci95'][0]:.3f}, {r['mean']['ci95'][1]:.3f}]{extra} on {len(items)} problems")
    atomic_write_json(run_dir / SKILLS, data)
    return {k: v["result"] for k, v in data["stages"].items()}


def held_out_accuracy(model: Any, tokenizer: Any, items: Sequence[Any], max_new_tokens: int = REPLY_TOKENS) -> dict[str, float]:
    """Greedy pass@1 on `items` as flat metrics (what 04 and 08 log): the mean over families (val_accuracy), the
    pooled count behind its interval (val_correct of val_problems) and per family (val_accuracy/<family>)."""
    res = evaluate_skills(model, tokenizer, list(items), greedy=True, max_new_tokens=max_new_tokens)
    out = {"val_accuracy": float(res["mean"]["pass@1"]), "val_correct": int(res["mean"]["correct"]),
           "val_problems": int(res["mean"]["n"])}
    for fam, r in res["families"].items():
        out[f"val_accuracy/{fam}"] = float(r["pass@1"])
    return out


def accuracy_table(before: dict[str, float], after: dict[str, float], labels: tuple[str, str] = ("before", "after")):
    """held_out_accuracy's metrics before and after a stage, per family and for all families, as a DataFrame."""
    import pandas as pd

    keys = ["val_accuracy"] + sorted(k for k in after if k.startswith("val_accuracy/"))
    rows = {k.split("/", 1)[1] if "/" in k else "mean of families": [before.get(k), after.get(k)] for k in keys}
    return pd.DataFrame(rows, index=list(labels)).T.round(3)
