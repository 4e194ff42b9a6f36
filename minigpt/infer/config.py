"""`GenerationConfig`: the sampling and stopping parameters of one generation call."""
from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from typing import Any

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
        # An out-of-range seed would only fail deep inside torch (an OverflowError at the first draw).
        check_seed(self.seed)

    def validate(self) -> None:
        """Raise ValueError naming the field when a value is out of range."""
        def bad(key: str, expected: str) -> ValueError:
            return ValueError(f"{key}: expected {expected}, got {getattr(self, key)!r}")

        if isinstance(self.max_new_tokens, bool) or not isinstance(self.max_new_tokens, int) or self.max_new_tokens <= 0:
            raise bad("max_new_tokens", "a positive integer")
        for key in ("temperature", "top_p", "repetition_penalty"):
            value = getattr(self, key)
            if isinstance(value, float) and not math.isfinite(value):
                raise bad(key, "a finite number")
        if not isinstance(self.temperature, (int, float)) or self.temperature < 0:
            raise bad("temperature", "a number >= 0 (0 = greedy)")
        if isinstance(self.top_k, bool) or not isinstance(self.top_k, int) or self.top_k < 0:
            raise bad("top_k", "an integer >= 0 (0 = off)")
        if not isinstance(self.top_p, (int, float)) or not 0.0 < self.top_p <= 1.0:
            raise bad("top_p", "a number in (0, 1] (1 = off)")
        if not isinstance(self.repetition_penalty, (int, float)) or self.repetition_penalty <= 0:
            raise bad("repetition_penalty", "a positive number (1.0 = off)")
        if isinstance(self.no_repeat_ngram_size, bool) or not isinstance(self.no_repeat_ngram_size, int) \
                or self.no_repeat_ngram_size < 0:
            raise bad("no_repeat_ngram_size", "an integer >= 0 (0 = off)")
        if not isinstance(self.stop_strings, (list, tuple)) or not all(isinstance(s, str) and s for s in self.stop_strings):
            raise bad("stop_strings", "a list of non-empty strings")
        if not isinstance(self.stop_token_ids, (list, tuple)) or not all(
                isinstance(i, int) and not isinstance(i, bool) and i >= 0 for i in self.stop_token_ids):
            raise bad("stop_token_ids", "a list of token ids >= 0")
        check_seed(self.seed)

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


def check_seed(seed: Any) -> None:
    """Raise ValueError naming `seed` unless it is None or an integer in 0 .. SEED_MAX."""
    if seed is None:
        return
    if isinstance(seed, bool) or not isinstance(seed, int):
        raise ValueError(f"seed: expected an integer in 0 .. {SEED_MAX} (2**63-1) or None, got {seed!r}")
    if not 0 <= seed <= SEED_MAX:
        raise ValueError(f"seed: expected an integer in 0 .. {SEED_MAX} (2**63-1), got {seed}")
