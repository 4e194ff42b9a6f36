"""Multiple-choice scoring by continuation log-likelihood.

Each choice is scored by the model's log-probability of its continuation given the context:

    ll(choice) = sum_i log p(cont_i | context, cont_<i)

`acc` picks the choice with the highest total; `acc_norm` divides by the choice's length in characters
first (what lm-evaluation-harness calls acc_norm), so longer options are not penalised for being long.
A context and its continuation are encoded as lm-evaluation-harness encodes them: the whole string, then
split after the context's tokens, so both scorers see the same token ids.

The 95% interval is Wilson's score interval for a binomial proportion (Wilson, 1927):

    (p + z²/2n ± z·sqrt(p(1-p)/n + z²/4n²)) / (1 + z²/n),   z = 1.96
"""
from __future__ import annotations

import logging
import math
from dataclasses import dataclass, field
from typing import Any, Sequence

import torch

logger = logging.getLogger(__name__)

LETTERS = "ABCDEFGHIJ"
ANSWER_PROMPT = "答案："


class DoesNotFit(ValueError):
    """A choice is longer than the model's context window: the item cannot be scored by this model."""


@dataclass
class MCItem:
    """One question: the context (`question`, or chat `messages` before the answer), its choices, the right one."""

    question: str
    choices: list[str]
    answer: int
    id: str = ""
    source: str = ""  # "file:row", for error messages and reports
    messages: list[dict] = field(default_factory=list)  # chat items: the dialogue before the scored reply

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {"id": self.id, "question": self.question, "choices": self.choices, "answer": self.answer}
        if self.messages:
            out["messages"] = self.messages
        return out


def wilson_interval(k: int, n: int, z: float = 1.96) -> tuple[float, float]:
    """Wilson score interval of k successes in n trials (95% for z=1.96); (0, 1) when n == 0."""
    if n <= 0:
        return 0.0, 1.0
    if not 0 <= k <= n:
        raise ValueError(f"wilson_interval: expected 0 <= k <= n, got k={k}, n={n}")
    p = k / n
    denom = 1 + z * z / n
    centre = (p + z * z / (2 * n)) / denom
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / denom
    return max(0.0, centre - half), min(1.0, centre + half)


def mean_of_rates_interval(counts: list[tuple[int, int]], z: float = 1.96) -> tuple[float, float]:
    """95% interval of the unweighted mean of several accuracies k_i/n_i (each family counts once): the mean
    +- z * sqrt(sum p_i(1-p_i)/n_i) / F, with each p_i taken as Agresti-Coull's (k_i + z^2/2) / (n_i + z^2) so that a
    family at 0 or 1 still adds its uncertainty; clipped to [0, 1]. (A pooled Wilson interval would not contain this
    mean when families have different sizes.)"""
    if not counts:
        return (0.0, 1.0)
    mean = sum(k / n for k, n in counts) / len(counts)
    var = 0.0
    for k, n in counts:
        p = (k + z * z / 2) / (n + z * z)
        var += p * (1 - p) / (n + z * z)
    half = z * math.sqrt(var) / len(counts)
    return (max(0.0, mean - half), min(1.0, mean + half))


def intervals_overlap(a: tuple[float, float], b: tuple[float, float]) -> bool:
    return a[0] <= b[1] and b[0] <= a[1]


def change_note(k_before: int, k_after: int, n: int, what: str = "accuracy", z: float = 1.96) -> str:
    """One line: `what` before -> after on n held-out items, each with its Wilson 95% interval, and a warning
    when the two intervals overlap (the held-out set is too small to tell the change from noise).

    e.g. change_note(1, 1, 2, "held-out reward accuracy") ->
    "held-out reward accuracy 0.500 [0.095, 0.905] before -> 0.500 [0.095, 0.905] after (n=2): the 95% intervals
    overlap; 2 held-out items cannot tell this change from noise" """
    lo_b, hi_b = wilson_interval(k_before, n, z)
    lo_a, hi_a = wilson_interval(k_after, n, z)
    pb, pa = (k_before / n, k_after / n) if n else (float("nan"), float("nan"))
    line = (f"{what} {pb:.3f} [{lo_b:.3f}, {hi_b:.3f}] before -> {pa:.3f} [{lo_a:.3f}, {hi_a:.3f}] after (n={n})")
    if intervals_overlap((lo_b, hi_b), (lo_a, hi_a)):
        line += f": the 95% intervals overlap; {n} held-out items cannot tell this change from noise"
    return line


def pass_at_k(n: int, c: int, k: int) -> float:
    """Unbiased pass@k from n samples of which c are correct (Chen et al. 2021, "Evaluating Large Language Models
    Trained on Code", eq. 1):  pass@k = 1 - C(n-c, k) / C(n, k),  computed as a product to stay stable:
    1 - prod_{i=n-c+1}^{n} (1 - k/i). With n == k it is 1 if any sample is correct, else 0."""
    if not 0 <= c <= n or not 1 <= k <= n:
        raise ValueError(f"pass_at_k: expected 0 <= c <= n and 1 <= k <= n, got n={n}, c={c}, k={k}")
    if n - c < k:
        return 1.0
    prod = 1.0
    for i in range(n - c + 1, n + 1):
        prod *= 1.0 - k / i
    return 1.0 - prod


def length_bias(items: Sequence["MCItem"]) -> dict[str, Any]:
    """How often the right choice is the (strictly) longest or shortest one, against the 1/choices a fair set has.

    A model that knows nothing can still beat random on a set where the answer is systematically the longest
    (or shortest) choice: it only has to prefer long (or short) continuations."""
    n = len(items)
    longest = sum(len(it.choices[it.answer]) > max(len(c) for j, c in enumerate(it.choices) if j != it.answer)
                  for it in items)
    shortest = sum(len(it.choices[it.answer]) < min(len(c) for j, c in enumerate(it.choices) if j != it.answer)
                   for it in items)
    fair = sum(1 / len(it.choices) for it in items) / n if n else float("nan")
    return {"n": n, "answer_longest": longest / n if n else float("nan"),
            "answer_shortest": shortest / n if n else float("nan"), "fair": fair}


def bias_flag(untrained_correct: int, n: int, random: float, items: Sequence["MCItem"] = ()) -> str | None:
    """A warning when an untrained model scores far above random: the lower end of its Wilson 95% interval is
    above the random baseline. With the items, it says whether the answer's length gives it away."""
    lo, hi = wilson_interval(untrained_correct, n)
    if n == 0 or lo <= random:
        return None
    msg = (f"biased: an untrained model scores {untrained_correct / n:.3f} [{lo:.3f}, {hi:.3f}] against {random:.3f} "
           f"random, so the items give their answer away")
    if items:
        b = length_bias(items)
        msg += (f"; the right choice is the longest in {b['answer_longest']:.0%} of items and the shortest in "
                f"{b['answer_shortest']:.0%} ({b['fair']:.0%} if length said nothing)")
    return msg


def render_item(item: MCItem, style: str) -> tuple[str, list[str]]:
    """(context text, continuation texts) of an item: "cloze" scores each choice's text after the question,
    "letters" lists the choices as A. ... and scores the letters after 答案：."""
    if style == "cloze":
        return item.question, list(item.choices)
    if style == "letters":
        lines = [item.question] + [f"{LETTERS[i]}. {c}" for i, c in enumerate(item.choices)]
        return "\n".join(lines) + "\n" + ANSWER_PROMPT, [LETTERS[i] for i in range(len(item.choices))]
    raise ValueError(f"style: expected 'cloze' or 'letters', got {style!r}")


def encode_pair(tokenizer: Any, context: str, continuation: str) -> tuple[list[int], list[int]]:
    """(context ids, continuation ids), split as lm-evaluation-harness splits them: trailing spaces of the context
    move to the continuation, the whole string is encoded and cut after the context's own token count (when that
    leaves no continuation token, the two are encoded apart)."""
    n = len(context) - len(context.rstrip())
    if n:
        context, continuation = context[:-n], context[-n:] + continuation
    whole = tokenizer.encode(context + continuation)
    ctx = tokenizer.encode(context)
    if len(whole) <= len(ctx):  # a merge across the boundary swallowed the continuation: encode the two apart
        return ctx, tokenizer.encode(continuation)
    return whole[:len(ctx)], whole[len(ctx):]


def chat_pair(tokenizer: Any, messages: Sequence[dict], reply: str) -> tuple[list[int], list[int]]:
    """(context ids, reply ids) through the chat template: the dialogue with the assistant header, then the reply
    and its closing <|im_end|>."""
    ctx = tokenizer.apply_chat_template(list(messages), add_generation_prompt=True)
    return ctx, tokenizer.encode(reply) + [tokenizer.im_end_id]


@torch.no_grad()
def continuation_logprobs(model: Any, pairs: Sequence[tuple[list[int], list[int]]]) -> list[float]:
    """Total log-probability of each continuation given its context, in one right-padded batch.

    A pair longer than the context window keeps its last max_seq_len + 1 tokens (the context is cut from the left)."""
    limit = model.config.max_seq_len + 1
    rows, spans = [], []
    for ctx, cont in pairs:
        if not cont:
            raise ValueError("a choice encodes to no tokens; every choice needs at least one character")
        full = (list(ctx) + list(cont))[-limit:]
        if len(cont) >= len(full):
            raise DoesNotFit(f"a choice of {len(cont)} tokens does not fit the context window ({limit - 1} tokens)")
        rows.append(full)
        spans.append((len(full) - len(cont), len(full)))
    width = max(len(r) for r in rows)
    device = next(model.parameters()).device
    x = torch.zeros((len(rows), width), dtype=torch.long)
    for i, r in enumerate(rows):
        x[i, :len(r)] = torch.tensor(r)
    x = x.to(device)
    logits, _ = model(x[:, :-1])
    logp = torch.log_softmax(logits.float(), dim=-1)
    out = []
    for i, (a, b) in enumerate(spans):
        targets = x[i, a:b]
        out.append(float(logp[i, a - 1:b - 1].gather(-1, targets[:, None]).sum()))
    return out


def few_shot_context(item: MCItem, shots: Sequence[MCItem], style: str, prefix: str = "") -> str:
    """Plain text: k solved examples, a blank line between each, then the question."""
    parts = []
    for s in shots:
        ctx, conts = render_item(s, style)
        parts.append(ctx + conts[s.answer])
    ctx, _ = render_item(item, style)
    return prefix + "\n\n".join(parts + [ctx])


def few_shot_messages(item: MCItem, shots: Sequence[MCItem], style: str) -> list[dict]:
    """Chat: each solved example as a user turn and its answer as the assistant's reply, then the question."""
    msgs: list[dict] = []
    for s in shots:
        ctx, conts = render_item(s, style)
        turn = list(s.messages) if s.messages else [{"role": "user", "content": ctx}]
        msgs += turn + [{"role": "assistant", "content": conts[s.answer]}]
    if item.messages:
        return msgs + list(item.messages)
    return msgs + [{"role": "user", "content": render_item(item, style)[0]}]


def score_item(model: Any, tokenizer: Any, item: MCItem, style: str = "cloze", chat: bool = False,
               shots: Sequence[MCItem] = (), prefix_eos: bool = True) -> dict[str, Any]:
    """Log-likelihood of each choice; the picks by total (`pred`) and per character (`pred_norm`)."""
    _, conts = render_item(item, style)
    if chat:
        msgs = few_shot_messages(item, shots, style)
        pairs = [chat_pair(tokenizer, msgs, c) for c in conts]
    else:
        context = few_shot_context(item, shots, style)
        pairs = [encode_pair(tokenizer, context, c) for c in conts]
        if prefix_eos:  # documents start after <|endoftext|> in training
            pairs = [([tokenizer.eos_id] + ctx, cont) for ctx, cont in pairs]
    lls = continuation_logprobs(model, pairs)
    norm = [ll / max(1, len(c)) for ll, c in zip(lls, conts)]
    return {"lls": lls, "pred": max(range(len(lls)), key=lls.__getitem__),
            "pred_norm": max(range(len(norm)), key=norm.__getitem__), "answer": item.answer}


def summarize(scores: Sequence[dict[str, Any]], n_choices: Sequence[int]) -> dict[str, Any]:
    """Accuracy (total and per-character log-likelihood), its 95% Wilson interval, and the random baseline."""
    n = len(scores)
    correct = sum(s["pred"] == s["answer"] for s in scores)
    correct_norm = sum(s["pred_norm"] == s["answer"] for s in scores)
    lo, hi = wilson_interval(correct, n)
    return {"n": n, "correct": correct, "accuracy": correct / n if n else float("nan"), "ci95": [lo, hi],
            "accuracy_norm": correct_norm / n if n else float("nan"),
            "random": sum(1 / k for k in n_choices) / n if n else float("nan")}


def evaluate_items(model: Any, tokenizer: Any, items: Sequence[MCItem], style: str = "cloze", chat: bool = False,
                   num_fewshot: int = 0, shots: Sequence[MCItem] | None = None,
                   prefix_eos: bool = True) -> dict[str, Any]:
    """Score every item (zero-shot, or k-shot with the first k of `shots` that are not the item itself).

    An item with a choice longer than the model's context is skipped and counted in `skipped`, with a warning:
    the accuracy and its baseline cover the scored items only."""
    was_training = model.training
    model.eval()
    pool = list(shots) if shots is not None else list(items)
    scores, scored, skipped = [], [], []
    try:
        for item in items:
            k_shots = [s for s in pool if s is not item][:num_fewshot]
            try:
                scores.append(score_item(model, tokenizer, item, style, chat, k_shots, prefix_eos))
                scored.append(item)
            except DoesNotFit:
                skipped.append(item.id or item.source)
    finally:
        model.train(was_training)
    if skipped:
        logger.warning("%d of %d items skipped: a choice is longer than the model's context (max_seq_len=%d), e.g. %s",
                       len(skipped), len(items), model.config.max_seq_len, skipped[0])
    out = summarize(scores, [len(i.choices) for i in scored])
    out.update(style=style, chat=chat, num_fewshot=num_fewshot, preds=[s["pred"] for s in scores], skipped=len(skipped))
    return out
