"""Sampling: one list of logits processors, then a draw (or an argmax) per row.

A processor is a pure function `Scores -> Scores`. `logits_processors(cfg, history)` lists the ones a
`GenerationConfig` switches on, in Hugging Face's order: repetition penalty, no-repeat n-grams,
temperature, top-k, top-p. `Sampler` applies the list to each step's logits and picks one token a row.

With a tokenizer that knows each token's bytes, `Utf8Table` masks every token that would make the generated
bytes invalid UTF-8 (the bytes 0xC0, 0xC1, 0xF5-0xFF that no UTF-8 text has; a continuation byte where a
character should start; a new character, or a special token, before the current one is complete): the
generated text never shows U+FFFD unless the model writes that character itself.

`Scores` is either the whole vocabulary (`ids` None: column = token id) or, after top-k, each row's
k best tokens, best first (`ids` names them). Top-p then sorts and sums only those k, and the draw
is among k values: the same distribution as filtering the whole vocabulary (every other token
would be -inf), without sorting and scattering a vocabulary-sized row each step.
"""
from __future__ import annotations

import weakref
from functools import partial
from typing import Any, Callable, Iterable, NamedTuple, Sequence

import numpy as np
import torch

from .config import GenerationConfig


class Scores(NamedTuple):
    """Logits (B, n) of each row's candidate tokens; -inf marks a banned token.

    ids: None when the n columns are the whole vocabulary, else (B, n) token ids sorted by logit,
    best first (what `keep_top_k` returns).
    """

    logits: torch.Tensor
    ids: torch.Tensor | None = None


Processor = Callable[[Scores], Scores]


# --------------------------------------------------------------------------- tensor-level filters


def apply_repetition_penalty(logits: torch.Tensor, seen: torch.Tensor, penalty: float) -> torch.Tensor:
    """CTRL / HF rule: for tokens already in the context, divide positive logits by `penalty`, multiply negative ones.

    seen: bool (B, V), True where the token occurs in the row's prompt or output.
    """
    if penalty == 1.0:
        return logits
    penalised = torch.where(logits > 0, logits / penalty, logits * penalty)
    return torch.where(seen, penalised, logits)


def _nucleus(sorted_logits: torch.Tensor, p: float) -> torch.Tensor:
    """Top-p on logits sorted best first along the last dim: -inf after the smallest prefix whose probability
    reaches p (the best token always stays)."""
    probs = sorted_logits.softmax(dim=-1)
    before = probs.cumsum(dim=-1) - probs  # probability mass strictly ahead of each token
    remove = before >= p
    remove[..., 0] = False
    return sorted_logits.masked_fill(remove, float("-inf"))


# --------------------------------------------------------------------------- the processors


def penalize_repeats(s: Scores, seen: torch.Tensor, penalty: float) -> Scores:
    """Repetition penalty on whole-vocabulary scores; seen: bool (B, V)."""
    return Scores(apply_repetition_penalty(s.logits, seen, penalty), s.ids)


def ban_tokens(s: Scores, banned: Sequence[Iterable[int]]) -> Scores:
    """-inf for each row's banned token ids (no-repeat n-grams) on whole-vocabulary scores."""
    logits = s.logits
    for b, toks in enumerate(banned):
        if toks:
            if logits is s.logits:
                logits = logits.clone()  # the input stays untouched
            logits[b, list(toks)] = float("-inf")
    return Scores(logits, s.ids)


def scale_temperature(s: Scores, temperature: float) -> Scores:
    """Logits divided by the temperature (> 0)."""
    return Scores(s.logits / temperature, s.ids)


def keep_top_k(s: Scores, k: int) -> Scores:
    """Each row's k best tokens become its candidates, best first.

    A tie at the k-th value would keep more than k tokens: then the whole vocabulary stays, with
    everything below the k-th value at -inf.
    """
    logits = s.logits
    if s.ids is not None or k <= 0 or k >= logits.shape[-1]:
        return s
    vals, ids = torch.topk(logits, k, dim=-1)  # sorted, descending
    kth = vals[..., -1:]
    if bool((logits >= kth).sum(dim=-1).gt(k).any()):
        return Scores(logits.masked_fill(logits < kth, float("-inf")))
    return Scores(vals, ids)


def keep_top_p(s: Scores, p: float) -> Scores:
    """Nucleus filter. Top-k candidates are sorted already; whole-vocabulary scores are sorted for it and put back."""
    if p >= 1.0:
        return s
    if s.ids is not None:
        return Scores(_nucleus(s.logits, p), s.ids)
    sorted_logits, order = torch.sort(s.logits, dim=-1, descending=True)
    return Scores(torch.empty_like(s.logits).scatter_(-1, order, _nucleus(sorted_logits, p)))


# --------------------------------------------------------------------------- valid UTF-8 only

# A row's UTF-8 state: continuation bytes still needed and the range the next one must be in
# (RFC 3629: E0 A0-BF, ED 80-9F, F0 90-BF, F4 80-8F exclude overlong forms, surrogates and > U+10FFFF).
_RANGES = [(0x80, 0xBF), (0xA0, 0xBF), (0x80, 0x9F), (0x90, 0xBF), (0x80, 0x8F)]
UTF8_STATES = [(0, 0x80, 0xBF)] + [(n, lo, hi) for n in (1, 2, 3) for lo, hi in _RANGES]
_STATE_ID = {s: i for i, s in enumerate(UTF8_STATES)}


def _lead(b: int) -> tuple[int, int, int] | None:
    """The state after a byte that starts a character (None: no character starts with it)."""
    if b < 0x80:
        return UTF8_STATES[0]
    if 0xC2 <= b <= 0xDF:
        return (1, 0x80, 0xBF)
    if 0xE0 <= b <= 0xEF:
        return (2, 0xA0, 0xBF) if b == 0xE0 else (2, 0x80, 0x9F) if b == 0xED else (2, 0x80, 0xBF)
    if 0xF0 <= b <= 0xF4:
        return (3, 0x90, 0xBF) if b == 0xF0 else (3, 0x80, 0x8F) if b == 0xF4 else (3, 0x80, 0xBF)
    return None  # a continuation byte, or C0, C1, F5-FF


def _scan(data: bytes, state: tuple[int, int, int]) -> tuple[int, int, int] | None:
    """The state after ``data`` from ``state``; None if the bytes are not valid UTF-8 there."""
    need, lo, hi = state
    for b in data:
        if need:
            if not lo <= b <= hi:
                return None
            need, lo, hi = need - 1, 0x80, 0xBF
        else:
            nxt = _lead(b)
            if nxt is None:
                return None
            need, lo, hi = nxt
    return (need, lo, hi)


class Utf8Table:
    """For every token and UTF-8 state: may the token come next, and the state after it.

    Built once per tokenizer (`utf8_table`) from each token's bytes; ids the tokenizer does not have are
    never allowed, special tokens only between characters.
    """

    def __init__(self, token_bytes: Sequence[bytes | None], special: Iterable[int], vocab_size: int) -> None:
        special = set(special)
        n_states = len(UTF8_STATES)
        allowed = np.zeros((n_states, vocab_size), dtype=bool)
        self.next_state = np.zeros((n_states, vocab_size), dtype=np.int8)
        for t in range(vocab_size):
            data = token_bytes[t] if t < len(token_bytes) else None
            if data is None:
                continue
            if t in special:
                allowed[0, t] = True
                continue
            # a token that starts a character can only follow a complete one (state 0)
            states = UTF8_STATES if data and 0x80 <= data[0] <= 0xBF else UTF8_STATES[:1]
            for s, state in enumerate(states):
                end = _scan(data, state)
                if end is not None:
                    allowed[s, t] = True
                    self.next_state[s, t] = _STATE_ID[end]
        self.allowed = torch.from_numpy(allowed)
        self._on: dict[str, torch.Tensor] = {}

    def allowed_on(self, device: torch.device | str) -> torch.Tensor:
        key = str(device)
        if key not in self._on:
            self._on[key] = self.allowed.to(device)
        return self._on[key]


_TABLES: "weakref.WeakKeyDictionary[Any, dict[int, Utf8Table]]" = weakref.WeakKeyDictionary()


def utf8_table(tokenizer: Any, vocab_size: int) -> Utf8Table | None:
    """The tokenizer's `Utf8Table` for a model of `vocab_size` (memoised), or None for a tokenizer that
    cannot tell a token's bytes."""
    if not hasattr(tokenizer, "token_bytes"):
        return None
    try:
        per = _TABLES.setdefault(tokenizer, {})
    except TypeError:  # not weakly referenceable: build each time
        per = {}
    if vocab_size not in per:
        n = min(vocab_size, int(getattr(tokenizer, "vocab_size", vocab_size)))
        per[vocab_size] = Utf8Table([tokenizer.token_bytes(i) for i in range(n)],
                                    getattr(tokenizer, "special_ids", ()), vocab_size)
    return per[vocab_size]


class Utf8Rows:
    """Each row's UTF-8 state while generating (a row starts between characters)."""

    def __init__(self, table: Utf8Table, rows: int, device: torch.device | str) -> None:
        self.table, self.states, self.device = table, [0] * rows, device

    def allowed(self) -> torch.Tensor:
        """(B, V) bool: the tokens each row may take next."""
        allowed = self.table.allowed_on(self.device)
        if not any(self.states):
            return allowed[0].expand(len(self.states), -1)
        return allowed[torch.tensor(self.states, device=self.device)]

    def keep(self, slots: Sequence[int]) -> None:
        self.states = [self.states[b] for b in slots]

    def push(self, tokens: Sequence[int]) -> None:
        self.states = [int(self.table.next_state[s, t]) for s, t in zip(self.states, tokens)]


def mask_invalid_utf8(s: Scores, rows: Utf8Rows) -> Scores:
    """-inf for every token that would make a row's bytes invalid UTF-8 (whole-vocabulary scores)."""
    return Scores(s.logits.masked_fill(~rows.allowed(), float("-inf")), s.ids)


# --------------------------------------------------------------------------- per-row history


def ngram_bans(tokens: Sequence[int], n: int) -> list[int]:
    """Tokens that would complete an n-gram already present in `tokens` (HF no_repeat_ngram_size)."""
    if n <= 0 or len(tokens) < n:
        return []
    prefix = tuple(tokens[len(tokens) - n + 1:]) if n > 1 else ()
    return [tokens[i + n - 1] for i in range(len(tokens) - n + 1) if tuple(tokens[i:i + n - 1]) == prefix]


class NgramIndex:
    """`ngram_bans` kept up to date for one row: (n-1)-gram -> set of next tokens, O(1) per token."""

    def __init__(self, tokens: Sequence[int], n: int) -> None:
        self.n, self.tokens, self.table = n, list(tokens), {}
        for i in range(len(self.tokens) - n + 1):
            self.table.setdefault(tuple(self.tokens[i:i + n - 1]), set()).add(self.tokens[i + n - 1])

    def push(self, tok: int) -> None:
        self.tokens.append(tok)
        if len(self.tokens) >= self.n:
            self.table.setdefault(tuple(self.tokens[-self.n:-1]), set()).add(tok)

    def banned(self) -> set[int]:
        n = self.n
        if len(self.tokens) < n - 1:
            return set()
        return self.table.get(tuple(self.tokens[len(self.tokens) - n + 1:]) if n > 1 else (), set())


class History:
    """What the processors need of each row's tokens so far: a seen mask (B, V), n-gram indexes and,
    with a `Utf8Table`, each row's UTF-8 state."""

    def __init__(self, prompts: Sequence[Sequence[int]], cfg: GenerationConfig, vocab_size: int,
                 device: torch.device | str = "cpu", utf8: Utf8Table | None = None) -> None:
        self.utf8 = Utf8Rows(utf8, len(prompts), device) if utf8 is not None else None
        self.seen: torch.Tensor | None = None
        if cfg.repetition_penalty != 1.0:
            self.seen = torch.zeros((len(prompts), vocab_size), dtype=torch.bool, device=device)
            for r, p in enumerate(prompts):
                self.seen[r, torch.tensor(list(p), dtype=torch.long, device=device)] = True
        n = cfg.no_repeat_ngram_size
        self.ngrams = [NgramIndex(p, n) for p in prompts] if n else None

    def banned(self) -> list[set[int]]:
        return [g.banned() for g in self.ngrams or []]

    def keep(self, slots: Sequence[int]) -> None:
        """Only the rows at `slots` stay (finished rows leave the batch)."""
        if self.utf8 is not None:
            self.utf8.keep(slots)
        if self.seen is not None:
            self.seen = self.seen[torch.tensor(list(slots), device=self.seen.device)]
        if self.ngrams is not None:
            self.ngrams = [self.ngrams[b] for b in slots]

    def push(self, tokens: Sequence[int]) -> None:
        """Each remaining row's new token."""
        if self.utf8 is not None:
            self.utf8.push(tokens)
        if self.seen is not None:
            rows = torch.arange(len(tokens), device=self.seen.device)
            self.seen[rows, torch.tensor(list(tokens), device=self.seen.device)] = True
        for g, tok in zip(self.ngrams or [], tokens):
            g.push(tok)


# --------------------------------------------------------------------------- the list and the draw


def logits_processors(cfg: GenerationConfig, history: History | None = None) -> list[Processor]:
    """The processors `cfg` switches on, in order. Penalties need a `history`; greedy decoding skips
    temperature, top-k and top-p, which never change a row's best token."""
    procs: list[Processor] = []
    if history is not None and history.utf8 is not None:
        procs.append(partial(mask_invalid_utf8, rows=history.utf8))
    if history is not None and history.seen is not None:
        procs.append(lambda s: penalize_repeats(s, history.seen, cfg.repetition_penalty))
    if history is not None and history.ngrams is not None:
        procs.append(lambda s: ban_tokens(s, history.banned()))
    return procs if cfg.greedy else procs + _sampling_processors(cfg)


def _sampling_processors(cfg: GenerationConfig) -> list[Processor]:
    """Temperature (once), top-k, top-p: the ones that shape the distribution a draw is made from."""
    procs: list[Processor] = []
    if cfg.temperature not in (0, 1):
        procs.append(partial(scale_temperature, temperature=cfg.temperature))
    if cfg.top_k > 0:
        procs.append(partial(keep_top_k, k=cfg.top_k))
    if cfg.top_p < 1.0:
        procs.append(partial(keep_top_p, p=cfg.top_p))
    return procs


def apply_processors(procs: Sequence[Processor], s: Scores) -> Scores:
    for proc in procs:
        s = proc(s)
    return s


def sample_from_logits(logits: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
    """One token per row from softmax(logits), by the exponential-race trick: argmax(p / Exp(1)).

    Same distribution as torch.multinomial, without its host sync; -inf logits are never drawn.
    """
    probs = logits.softmax(dim=-1)
    race = torch.empty_like(probs).exponential_(1.0, generator=generator)
    return (probs / race).argmax(dim=-1)


def greedy_tokens(logits: torch.Tensor) -> torch.Tensor:
    """argmax over the last dim (first index among ties, as torch's). On a CPU numpy's is used: it
    skips the parallel-reduction setup that dominates for one small row."""
    if logits.device.type == "cpu" and logits.dtype == torch.float32:
        return torch.from_numpy(logits.numpy().argmax(-1))
    return logits.argmax(dim=-1)


def pick(s: Scores, greedy: bool, generator: torch.Generator | None = None) -> torch.Tensor:
    """One token id per row: the best one, or a draw from softmax of the scores."""
    choice = greedy_tokens(s.logits) if greedy else sample_from_logits(s.logits, generator)
    return choice if s.ids is None else s.ids.gather(-1, choice.unsqueeze(-1)).squeeze(-1)


class Sampler:
    """Picks each row's next token: the processors of `cfg`, then an argmax or a seeded draw."""

    def __init__(self, cfg: GenerationConfig, prompts: Sequence[Sequence[int]], vocab_size: int,
                 device: torch.device | str = "cpu", utf8: Utf8Table | None = None) -> None:
        """utf8: the tokenizer's `Utf8Table` (see `utf8_table`) to keep the output valid UTF-8; None = off."""
        self.history = History(prompts, cfg, vocab_size, device, utf8)
        self.processors = logits_processors(cfg, self.history)
        self.greedy = cfg.greedy
        self.generator = None
        if cfg.seed is not None:
            self.generator = torch.Generator(device=device)
            self.generator.manual_seed(cfg.seed)

    def __call__(self, logits: torch.Tensor) -> list[int]:
        """logits (B, V) -> one token id a row (the step's one host sync: stops and streaming need them)."""
        return pick(apply_processors(self.processors, Scores(logits)), self.greedy, self.generator).tolist()
