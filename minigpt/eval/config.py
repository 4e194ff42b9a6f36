"""EvalConfig: what notebook 06 (and `python -m minigpt.report`) evaluates, and how."""
from __future__ import annotations

from dataclasses import asdict, dataclass

from ..data.skills import REPLY_TOKENS

STYLES = ("auto", "letters", "cloze")
CHAT_MODES = ("auto", "always", "never")


@dataclass
class EvalConfig:
    """Multiple-choice evaluation of a run's checkpoints.

    checkpoint: the model to evaluate ("" = the SFT model if there is one, else the pretrained one).
    eval_data: a folder (or one file) of benchmarks you downloaded: C-Eval `*_val.csv`/`*_dev.csv`, CMMLU
        per-subject CSVs, or JSONL `{question, choices, answer}`. Nothing is downloaded.
    num_fewshot: k solved examples before each question (from the dev split when there is one).
    mc_style: "letters" lists the options and scores " A".."D"; "cloze" scores each option's text;
        "auto" = letters for C-Eval/CMMLU CSVs, cloze for JSONL and the built-in cloze.
    chat_template: "auto" = the chat template for the chat cloze only; "always" / "never".
    cloze_*: the built-in benchmark made from the held-out split (runs/<run>/eval/cloze.jsonl).
    max_items: at most this many items per benchmark file (0 = all).
    untrained_baseline: also score a model of the run's shape with its seed's random initialisation.
    skills: score every model on the built-in skills (held-out test problems, greedy pass@1, eval/skills.json);
        skills_per_family problems per family, skills_lang "zh", "en" or "both", skills_seed picks the problems and seeds
        the sampling; skills_samples = k > 0 adds sampled pass@k (temperature skills_temperature) for the models
        from SFT on, on the first skills_sample_per_family problems of each family (0 = all; k samples cost k
        greedy replies); skills_max_new_tokens per reply; skills_batch_size prompts per batched generation call.
    """

    checkpoint: str = ""
    eval_data: str = ""
    num_fewshot: int = 0
    mc_style: str = "auto"
    chat_template: str = "auto"
    max_items: int = 0
    cloze_items: int = 200
    cloze_seed: int = 0
    cloze_prefix_chars: int = 32
    cloze_min_chars: int = 8
    cloze_max_chars: int = 32
    untrained_baseline: bool = True
    skills: bool = True
    skills_per_family: int = 200
    skills_lang: str = "zh"
    skills_seed: int = 0
    skills_samples: int = 8
    skills_sample_per_family: int = 20
    skills_temperature: float = 1.0
    skills_max_new_tokens: int = REPLY_TOKENS
    skills_batch_size: int = 64
    speed_new_tokens: int = 32
    compare_with: str = ""
    device: str = "cpu"

    def validate(self) -> None:
        if self.mc_style not in STYLES:
            raise ValueError(f"mc_style: expected one of {STYLES}, got {self.mc_style!r}")
        if self.chat_template not in CHAT_MODES:
            raise ValueError(f"chat_template: expected one of {CHAT_MODES}, got {self.chat_template!r}")
        if self.skills_lang not in ("zh", "en", "both"):
            raise ValueError(f"skills_lang: expected 'zh', 'en' or 'both', got {self.skills_lang!r}")
        for name in ("skills_per_family", "skills_max_new_tokens", "skills_batch_size"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name}: expected 1 or more, got {getattr(self, name)}")
        if not self.skills_temperature > 0:
            raise ValueError(f"skills_temperature: expected a number > 0, got {self.skills_temperature}")
        for name in ("num_fewshot", "max_items", "cloze_items", "speed_new_tokens", "skills_samples", "skills_seed",
                     "skills_sample_per_family"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name}: expected 0 or more, got {getattr(self, name)}")
        if not 0 < self.cloze_min_chars <= self.cloze_max_chars:
            raise ValueError(f"cloze_min_chars / cloze_max_chars: expected 0 < min <= max, got "
                             f"{self.cloze_min_chars} / {self.cloze_max_chars}")
        if self.cloze_prefix_chars <= 0:
            raise ValueError(f"cloze_prefix_chars: expected a positive count, got {self.cloze_prefix_chars}")

    def to_dict(self) -> dict:
        return asdict(self)
