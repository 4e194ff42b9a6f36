"""`GenerationConfig`: the sampling and stopping parameters of one generation call."""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

from ..config import Check, check_config

# torch.Generator.manual_seed takes a 64-bit integer; seeds are kept to its non-negative half.
SEED_MAX = 2**63 - 1


@dataclass
class GenerationConfig:
    """Sampling parameters. Every field is also a notebook-05 parameter.

    temperature 0 or do_sample=False means greedy. top_k=0 and top_p=1.0 switch those filters off.
    Generation stops at <|endoftext|> and <|im_end|> (unless ignore_eos), at any id in
    stop_token_ids, at any of stop_strings (which are cut from the text), or after max_new_tokens.
    """

    max_new_tokens: int = 100
    temperature: float = 0.8
    top_k: int = 50
    top_p: float = 0.9
    do_sample: bool = True
    repetition_penalty: float = 1.0
    no_repeat_ngram_size: int = 0
    stop_strings: list[str] = field(default_factory=list)
    stop_token_ids: list[int] = field(default_factory=list)
    ignore_eos: bool = False
    skip_special_tokens: bool = True
    seed: int | None = None

    def __post_init__(self) -> None:
        check_config(self)  # once, when made (replace() makes a new one); validate() after changing a field

    def checks(self) -> list[Check]:
        def number(v: Any) -> bool:
            return isinstance(v, (int, float)) and not isinstance(v, bool)

        def count(v: Any, least: int) -> bool:
            return isinstance(v, int) and not isinstance(v, bool) and v >= least

        def got(key: str) -> str:
            return f"got {getattr(self, key)!r}"

        return [
            (count(self.max_new_tokens, 1), "max_new_tokens", f"a positive integer, {got('max_new_tokens')}"),
            (number(self.temperature) and self.temperature >= 0, "temperature", f"a number >= 0 (0 = greedy), {got('temperature')}"),
            (count(self.top_k, 0), "top_k", f"an integer >= 0 (0 = off), {got('top_k')}"),
            (number(self.top_p) and 0.0 < self.top_p <= 1.0, "top_p", f"a number in (0, 1] (1 = off), {got('top_p')}"),
            (number(self.repetition_penalty) and self.repetition_penalty > 0, "repetition_penalty",
             f"a positive number (1.0 = off), {got('repetition_penalty')}"),
            (count(self.no_repeat_ngram_size, 0), "no_repeat_ngram_size", f"an integer >= 0 (0 = off), {got('no_repeat_ngram_size')}"),
            (isinstance(self.stop_strings, (list, tuple)) and all(isinstance(s, str) and s for s in self.stop_strings),
             "stop_strings", f"a list of non-empty strings, {got('stop_strings')}"),
            (isinstance(self.stop_token_ids, (list, tuple)) and all(count(i, 0) for i in self.stop_token_ids),
             "stop_token_ids", f"a list of token ids >= 0, {got('stop_token_ids')}"),
            # torch.Generator.manual_seed takes a 64-bit integer: an out-of-range seed would only fail at the first draw
            (self.seed is None or count(self.seed, 0) and self.seed <= SEED_MAX, "seed",
             f"an integer in 0 .. {SEED_MAX} (2**63-1) or None, {got('seed')}"),
        ]

    def validate(self) -> None:
        """Check again after a field was changed in place; ValueError naming the field."""
        check_config(self)

    @property
    def greedy(self) -> bool:
        return not self.do_sample or self.temperature == 0

    def replace(self, **changes: Any) -> "GenerationConfig":
        return dataclasses.replace(self, **changes)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any], strict: bool = False) -> "GenerationConfig":
        """Build from a dict (e.g. notebook parameters); keys that are not fields are ignored unless strict."""
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = set(d) - names
        if strict and unknown:
            raise ValueError(f"generation config: unknown keys {sorted(unknown)}; expected some of {sorted(names)}")
        return cls(**{k: v for k, v in d.items() if k in names})
