"""Text generation: `TextGenerator` (completion, batches, streaming, chat) and `ChatSession`.

The pieces, one idea each:
- config.py: `GenerationConfig`, the sampling and stopping parameters;
- sampling.py: the logits processors (penalties, temperature, top-k, top-p) and the draw;
- decode.py: the loop: prefill through the model, then one token per row a step;
- backends.py: which decode step runs (the model's forward, or the C step of native_decode.py);
- streaming.py: each row's text: UTF-8 safe, stop strings, hold-back.

    gen = TextGenerator(model, tokenizer)                      # quantize="int8", decode_backend="auto"|"native"|"model"
    gen.generate("长江、", GenerationConfig(max_new_tokens=50))
"""
from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Any, Callable, Iterator, Sequence

import torch

from ..data import normalize as textnorm
from ..data.normalize import NORMALIZE_VERSION
from ..model.gpt import GPT
from .backends import DECODE_BACKENDS, DecodeSteps
from .config import GenerationConfig
from .decode import decode
from .sampling import Sampler, utf8_table
from .streaming import RowText

__all__ = ["DECODE_BACKENDS", "ChatSession", "GenerationConfig", "TextGenerator", "read_prompts_file"]

logger = logging.getLogger(__name__)

# Fallback ids when a tokenizer lacks the attributes (minigpt's tokenizer has them all).
_EOS_ID, _IM_START_ID, _IM_END_ID, _PAD_ID = 0, 1, 2, 3


class TextGenerator:
    """Generate text from a minigpt `GPT` and its tokenizer."""

    def __init__(self, model: GPT, tokenizer: Any, device: str | torch.device | None = None,
                 quantize: str | None = None, decode_backend: str = "auto", valid_utf8: bool = True) -> None:
        """quantize: None (the model's weights as they are) or "int8" (per-row int8 weights, for the
        prompt and every new token). decode_backend: "auto" (the C step of native_decode.py on a
        float32 CPU model, when it builds; else the model's forward), "native" (the C step or an
        error) or "model" (the model's forward). valid_utf8: never sample a
        token that makes the text invalid UTF-8 (sampling.Utf8Table); False samples from the model's
        distribution as it is, as transformers' generate does.

        Prompts and chat messages go through ``minigpt.data.normalize.normalize`` in the version the
        tokenizer's training data had, so the model reads them in the form it was trained on."""
        self.steps = DecodeSteps(model, quantize, decode_backend)
        self.quantize, self.decode_backend = self.steps.quantize, self.steps.backend
        self.model = model
        self.tokenizer = tokenizer
        if device is not None:
            model.to(device)
        self.device = next(model.parameters()).device
        self.cfg = model.config
        tv = getattr(tokenizer, "vocab_size", None)
        if tv is not None and tv > self.cfg.vocab_size:
            raise ValueError(
                f"tokenizer has {tv} tokens but the model's vocab_size is {self.cfg.vocab_size}: "
                "they do not belong together (load both from the same checkpoint)")
        self.eos_id = getattr(tokenizer, "eos_id", _EOS_ID)
        self.pad_id = getattr(tokenizer, "pad_id", _PAD_ID)
        self.im_end_id = getattr(tokenizer, "im_end_id", _IM_END_ID)
        self.special_ids = set(getattr(tokenizer, "special_ids", {_EOS_ID, _IM_START_ID, _IM_END_ID, _PAD_ID}))
        self.last_stats: dict[str, Any] = {}
        self.valid_utf8 = valid_utf8
        self.normalize_version = getattr(tokenizer, "normalize_version", NORMALIZE_VERSION)

    @classmethod
    def from_checkpoint(cls, path: str | Path, tokenizer: Any | None = None, device: str | None = None,
                        **options: Any) -> "TextGenerator":
        """Load a checkpoint folder. A separately given tokenizer must be the one the model was trained with."""
        from ..train.checkpoint import load_checkpoint, read_config

        model, ckpt_tok, _ = load_checkpoint(path, device=device or "cpu")
        if tokenizer is not None:
            expected = read_config(path).get("tokenizer_sha256")
            if expected and getattr(tokenizer, "sha256", None) != expected:
                raise ValueError(
                    f"{Path(path) / 'config.json'}: tokenizer_sha256 {expected[:12]} differs from the given tokenizer's "
                    f"{str(getattr(tokenizer, 'sha256', None))[:12]}: the model was trained with another tokenizer")
        return cls(model, tokenizer or ckpt_tok, device=device, **options)

    # ---- prompts

    def encode_prompt(self, prompt: str) -> list[int]:
        if not isinstance(prompt, str):
            raise TypeError(f"prompt: expected a string, got {type(prompt).__name__}")
        prompt = self.normalize(prompt)
        ids = self.tokenizer.encode(prompt) if prompt else []
        if not ids:
            logger.warning("empty prompt: generating from <|endoftext|> (id %d), i.e. the start of a new document",
                           self.eos_id)
            ids = [self.eos_id]
        return ids

    def normalize(self, text: str) -> str:
        """``text`` as the model's training data was normalised (see ``minigpt.data.normalize``)."""
        return textnorm.normalize(text, version=self.normalize_version)

    def normalize_messages(self, messages: Sequence[dict]) -> list[dict]:
        """Chat messages with normalised contents (anything else in a message is left to the template's checks)."""
        return [{**m, "content": self.normalize(m["content"])} if isinstance(m, dict) and isinstance(m.get("content"), str)
                else m for m in messages]

    def _fit_context(self, ids: list[int], max_new_tokens: int) -> list[int]:
        """Cut a prompt that leaves no room in the context from the left, keeping room to generate."""
        ctx = self.cfg.max_seq_len
        if len(ids) < ctx:
            return ids
        keep = ctx - max(1, min(max_new_tokens, ctx // 2))
        logger.warning("prompt has %d tokens, longer than the context (max_seq_len=%d): keeping its last %d tokens",
                       len(ids), ctx, keep)
        return ids[-keep:]

    def _check_ids(self, prompts: list[list[int]]) -> None:
        """Token-id prompts: integers in [0, vocab_size), else an error naming the row, the id and the vocabulary."""
        V = self.cfg.vocab_size
        for r, p in enumerate(prompts):
            for t in p:
                if isinstance(t, bool) or not isinstance(t, int):
                    raise TypeError(f"prompt_ids[{r}]: expected token ids (integers), got {t!r}")
                if not 0 <= t < V:
                    raise ValueError(f"prompt_ids[{r}]: token id {t} is outside the vocabulary: expected 0 .. {V - 1} "
                                     f"(vocab_size {V})")

    def _stop_ids(self, cfg: GenerationConfig) -> set[int]:
        ids = set(cfg.stop_token_ids)
        if not cfg.ignore_eos:
            ids |= {self.eos_id, self.im_end_id}
        return ids

    # ---- the loop

    def _budget(self, prompts: list[list[int]], cfg: GenerationConfig) -> int:
        """New tokens per row that fit the context after the longest prompt."""
        T = max(len(p) for p in prompts)
        budget = min(cfg.max_new_tokens, self.cfg.max_seq_len - T)
        if budget < cfg.max_new_tokens:
            logger.warning("max_new_tokens=%d does not fit the context (max_seq_len=%d, prompt %d tokens): "
                           "generating at most %d", cfg.max_new_tokens, self.cfg.max_seq_len, T, budget)
        return budget

    def _rows(self, n: int, cfg: GenerationConfig) -> list[RowText]:
        cfg.validate()  # before anything reads the settings: a bad value is a message naming its field
        stop = self._stop_ids(cfg)
        for s in cfg.stop_strings:  # a special token's text given as a stop string stops at that token
            for i in self.special_ids:
                try:
                    if self.tokenizer.id_to_token(i) == s:
                        stop.add(i)
                except Exception:  # a tokenizer without id_to_token: keep the string
                    pass
        return [RowText(self.tokenizer, stop, cfg.stop_strings, self.special_ids, cfg.skip_special_tokens)
                for _ in range(n)]

    def _run(self, prompts: list[list[int]], cfg: GenerationConfig, rows: list[RowText]) -> Iterator[None]:
        """Generate into `rows` (filled in place); yields after every step so callers can stream."""
        prompts = [self._fit_context(p, cfg.max_new_tokens) for p in prompts]
        budget = self._budget(prompts, cfg)
        model, native = self.steps.forward_model(), self.steps.native_step()
        sampler = Sampler(cfg, prompts, self.cfg.vocab_size, self.device,
                          utf8=utf8_table(self.tokenizer, self.cfg.vocab_size) if self.valid_utf8 else None)
        t0, n_new = time.perf_counter(), 0
        try:
            for n in decode(model, native, prompts, self.pad_id, budget, sampler, rows):
                n_new += n
                yield
            for row in rows:
                row.finish("max_new_tokens" if budget == cfg.max_new_tokens else "context_full")
        finally:
            dt = time.perf_counter() - t0
            self.last_stats = {"new_tokens": n_new, "seconds": dt, "tokens_per_s": n_new / dt if dt > 0 else 0.0,
                               "batch_size": len(prompts), "backend": "model" if native is None else "native",
                               "quantize": self.quantize, "prompt_tokens": sum(map(len, prompts))}

    # ---- public API

    def generate_ids(self, prompt_ids: Sequence[int] | Sequence[Sequence[int]], config: GenerationConfig | None = None
                     ) -> list[int] | list[list[int]]:
        """Token ids in, generated ids out (a final stop token included). A list of lists is a batch."""
        cfg = config or GenerationConfig()
        batch = bool(prompt_ids) and isinstance(prompt_ids[0], (list, tuple))
        prompts = [list(p) or [self.eos_id] for p in (prompt_ids if batch else [prompt_ids])]
        self._check_ids(prompts)
        rows = self._rows(len(prompts), cfg)
        for _ in self._run(prompts, cfg, rows):
            pass
        out = [r.ids for r in rows]
        return out if batch else out[0]

    def generate_texts(self, prompt_ids: Sequence[Sequence[int]], config: GenerationConfig | None = None) -> list[str]:
        """Token-id prompts in (e.g. chat templates), their continuations' texts out, in one batched call: the text
        `chat` would give each (special tokens and an unfinished character at the end left out)."""
        cfg = config or GenerationConfig()
        prompts = [list(p) or [self.eos_id] for p in prompt_ids]
        rows = self._rows(len(prompts), cfg)
        for _ in self._run(prompts, cfg, rows):
            pass
        return [r.text for r in rows]

    def stream_ids(self, prompt_ids: Sequence[int], config: GenerationConfig | None = None) -> Iterator[str]:
        """Text pieces as they become final, for a prompt given as token ids (e.g. a chat template)."""
        cfg = config or GenerationConfig()
        prompt = list(prompt_ids) or [self.eos_id]
        self._check_ids([prompt])
        rows = self._rows(1, cfg)
        row = rows[0]
        for _ in self._run([prompt], cfg, rows):
            piece = row.pending()
            if piece:
                yield piece
        piece = row.pending()
        if piece:
            yield piece

    def stream(self, prompt: str, config: GenerationConfig | None = None) -> Iterator[str]:
        """Yield text pieces as they are generated; never half of a multi-byte character."""
        return self.stream_ids(self.encode_prompt(prompt), config)

    def generate(self, prompt: str, config: GenerationConfig | None = None,
                 callback: Callable[[str], None] | None = None) -> str:
        """The generated continuation (without the prompt). With a callback, each piece is passed to it as soon
        as it is final (or iterate `stream`)."""
        pieces = []
        for piece in self.stream(prompt, config):
            pieces.append(piece)
            if callback is not None:
                callback(piece)
        return "".join(pieces)

    def batch_generate(self, prompts: Sequence[str], config: GenerationConfig | None = None,
                       batch_size: int = 8) -> list[str]:
        """Continuations of several prompts, `batch_size` at a time (left padding, per-row stopping).

        Each row gets the budget it would get alone: min(max_new_tokens, room its own prompt leaves in the
        context). Rows of one chunk with different budgets decode as separate batches, so a long prompt never
        cuts a short one's continuation (rows decode exactly as alone, so the grouping changes no greedy text)."""
        cfg = config or GenerationConfig()
        if isinstance(prompts, str):
            raise TypeError("prompts: expected a list of strings, got one string (use generate)")
        cfg.validate()
        out: list[str] = []
        for i in range(0, len(prompts), max(1, batch_size)):
            chunk = [self._fit_context(self.encode_prompt(p), cfg.max_new_tokens) for p in prompts[i:i + batch_size]]
            groups: dict[int, list[int]] = {}
            for k, ids in enumerate(chunk):
                groups.setdefault(min(cfg.max_new_tokens, self.cfg.max_seq_len - len(ids)), []).append(k)
            texts = [""] * len(chunk)
            for members in groups.values():
                rows = self._rows(len(members), cfg)
                for _ in self._run([chunk[k] for k in members], cfg, rows):
                    pass
                for k, row in zip(members, rows):
                    texts[k] = row.text
            out.extend(texts)
        return out

    def chat_prompt_ids(self, messages: list[dict], config: GenerationConfig | None = None) -> list[int]:
        """The ChatML prompt; the oldest turns (after a system message) are dropped when it overflows the context."""
        cfg = config or GenerationConfig()
        msgs = self.normalize_messages(messages)
        room = self.cfg.max_seq_len - max(1, min(cfg.max_new_tokens, self.cfg.max_seq_len // 2))
        ids = self.tokenizer.apply_chat_template(msgs, add_generation_prompt=True)
        first = 1 if msgs and msgs[0].get("role") == "system" else 0
        dropped = 0
        while len(ids) > room and len(msgs) - first > 1:
            del msgs[first]
            dropped += 1
            ids = self.tokenizer.apply_chat_template(msgs, add_generation_prompt=True)
        if dropped:
            logger.warning("chat history longer than the context: dropped the %d oldest message(s)", dropped)
        return ids

    def chat_stream(self, messages: list[dict], config: GenerationConfig | None = None) -> Iterator[str]:
        """Stream the assistant's reply to `messages` (ChatML via the tokenizer's template)."""
        return self.stream_ids(self.chat_prompt_ids(messages, config), config)

    def chat(self, messages: list[dict], config: GenerationConfig | None = None,
             callback: Callable[[str], None] | None = None) -> str:
        """The assistant's reply to a conversation (list of {"role", "content"} dicts)."""
        pieces = []
        for piece in self.chat_stream(messages, config):
            pieces.append(piece)
            if callback is not None:
                callback(piece)
        return "".join(pieces).strip()


class ChatSession:
    """A conversation with history, for the CLI and the notebook panel."""

    def __init__(self, generator: TextGenerator, config: GenerationConfig | None = None, system: str = "") -> None:
        self.generator = generator
        self.config = config or GenerationConfig()
        self.system = system
        self.history: list[dict] = []

    def messages(self) -> list[dict]:
        return ([{"role": "system", "content": self.system}] if self.system else []) + self.history

    def clear(self) -> None:
        self.history = []

    def stream(self, user_text: str, config: GenerationConfig | None = None) -> Iterator[str]:
        """Stream the reply; the user message and the full reply join the history when it ends."""
        self.history.append({"role": "user", "content": self.generator.normalize(user_text)})
        pieces = []
        try:
            for piece in self.generator.chat_stream(self.messages(), config or self.config):
                pieces.append(piece)
                yield piece
        finally:
            self.history.append({"role": "assistant", "content": "".join(pieces).strip()})

    def send(self, user_text: str, config: GenerationConfig | None = None,
             callback: Callable[[str], None] | None = None) -> str:
        for piece in self.stream(user_text, config):
            if callback is not None:
                callback(piece)
        return self.history[-1]["content"]


def read_prompts_file(path: str | Path) -> list[str]:
    """Prompts from a text file, one a line; blank lines are skipped."""
    p = Path(path)
    if not p.is_file():
        raise FileNotFoundError(f"{p}: prompts file not found; expected a UTF-8 text file with one prompt a line")
    prompts = [line.rstrip("\r\n") for line in p.read_text(encoding="utf-8").splitlines()]
    prompts = [x for x in prompts if x.strip()]
    if not prompts:
        raise ValueError(f"{p}: no prompts (expected one prompt a line)")
    return prompts


