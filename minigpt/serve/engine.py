"""Continuous batching: one thread owns the model and one decoding batch; requests join and leave it.

Each loop turn the engine
1. takes waiting requests (as many as the batch has room for), prefills their prompts together,
   samples each one's first token and joins them to the running batch (`infer.decode.join`: the
   caches are realigned with left padding, so each row decodes exactly as it would alone);
2. drops rows whose client went away;
3. runs one decode step for every row (the C step on a float32 CPU model, else the model's forward),
   samples each row's next token with that request's own sampler (its temperature, top-p and seed),
   and sends the text that became final to the request's sink.

A finished row leaves the batch at once. Sinks are called on the engine thread: they must only hand
the event over (e.g. `loop.call_soon_threadsafe`). The queue of waiting requests is bounded
(`QueueFull`), so a flood of requests is refused instead of piling up.
"""
from __future__ import annotations

import logging
import threading
import time
from collections import deque
from dataclasses import dataclass, field
from typing import Any, Callable

import torch

from ..infer.backends import DecodeSteps
from ..infer.config import GenerationConfig
from ..infer.decode import Batch, join, prefill, realign, step
from ..infer.generate import TextGenerator
from ..infer.sampling import Sampler, utf8_table
from ..infer.streaming import RowText
from ..model.gpt import GPT, KVCache

logger = logging.getLogger(__name__)

# Slots allocated beyond what the rows need, so that a few joins in a row do not each reallocate.
_SPARE = 16


class QueueFull(Exception):
    """More requests are waiting than the engine's max_queue."""


@dataclass
class Event:
    """What a request's sink receives: text that became final, then one event with `finish` set."""

    text: str = ""
    finish: str | None = None  # "stop" | "length" | "error"
    completion_tokens: int = 0
    error: str | None = None


@dataclass
class Request:
    prompt: list[int]
    config: GenerationConfig
    sink: Callable[[Event], None]
    cancelled: threading.Event = field(default_factory=threading.Event)
    submitted: float = field(default_factory=time.perf_counter)

    def cancel(self) -> None:
        """The client went away: the engine drops the request (queued or decoding) at its next turn."""
        self.cancelled.set()


class _Active:
    """One decoding row: its request, text, sampler and the token it feeds next."""

    def __init__(self, req: Request, text: RowText, sampler: Sampler) -> None:
        self.req, self.text, self.sampler = req, text, sampler
        self.generated = 0
        self.last = -1

    @property
    def remaining(self) -> int:
        return self.req.config.max_new_tokens - self.generated

    def push(self, tok: int) -> bool:
        """Take the sampled token; send new text (and the end); True when the row is done."""
        self.generated += 1
        self.last = tok
        done = self.text.push(tok)
        if not done and self.remaining <= 0:
            self.text.finish("length")
            done = True
        self.sampler.history.push([tok])
        piece = self.text.pending()
        if done:
            reason = "length" if self.text.stop_reason == "length" else "stop"
            self.req.sink(Event(piece, reason, self.generated))
        elif piece:
            self.req.sink(Event(piece))
        return done


class Engine:
    """Owns `model` (loaded once), serves requests with continuous batching on a background thread."""

    def __init__(self, model: GPT, tokenizer: Any, quantize: str | None = None, max_batch: int = 8,
                 max_queue: int = 64, decode_backend: str = "auto", valid_utf8: bool = True) -> None:
        """quantize, decode_backend and valid_utf8 mean what they mean for `TextGenerator`, whose prompt
        normalisation and decode steps the engine shares, so a request's text equals `TextGenerator`'s."""
        if max_batch < 1 or max_queue < 0:
            raise ValueError(f"max_batch must be >= 1 and max_queue >= 0, got {max_batch} and {max_queue}")
        self.model, self.tokenizer = model.eval(), tokenizer
        self.generator = TextGenerator(model, tokenizer, quantize=quantize, decode_backend=decode_backend,
                                       valid_utf8=valid_utf8)
        self.steps: DecodeSteps = self.generator.steps
        self._utf8 = utf8_table(tokenizer, model.config.vocab_size) if valid_utf8 else None
        self.max_batch, self.max_queue = max_batch, max_queue
        self.context = model.config.max_seq_len
        self.vocab_size = model.config.vocab_size
        self.pad_id = getattr(tokenizer, "pad_id", 0)
        self.special_ids = set(getattr(tokenizer, "special_ids", ()))
        self._end_ids = {getattr(tokenizer, "eos_id", 0), getattr(tokenizer, "im_end_id", 2)}
        self._waiting: deque[Request] = deque()
        self._active: list[_Active] = []
        self._admitting = 0  # requests taken from the queue, being prefilled
        self._cache: KVCache | None = None
        self._batch: Batch | None = None
        self._wake = threading.Condition()
        self._closing = False
        self._thread: threading.Thread | None = None
        self.steps_run = 0
        self.max_rows_seen = 0

    # ---- the caller's side

    def start(self) -> "Engine":
        if self._thread is None:
            self._thread = threading.Thread(target=self._loop, name="minigpt-engine", daemon=True)
            self._thread.start()
        return self

    def submit(self, req: Request) -> None:
        """Queue `req`; QueueFull when max_queue requests are already waiting, RuntimeError when closing."""
        with self._wake:
            if self._closing:
                raise RuntimeError("the engine is shutting down")
            if len(self._waiting) >= self.max_queue:
                raise QueueFull(self.max_queue)
            self._waiting.append(req)
            self._wake.notify()

    def stats(self) -> dict[str, int]:
        with self._wake:
            return {"running": len(self._active) + self._admitting, "waiting": len(self._waiting), "steps": self.steps_run,
                    "max_batch": self.max_batch, "max_queue": self.max_queue}

    def close(self, timeout: float = 10.0) -> None:
        """Stop: requests still waiting or decoding end with finish "error"; the thread is joined."""
        with self._wake:
            self._closing = True
            self._wake.notify()
        if self._thread is not None:
            self._thread.join(timeout)

    def normalize(self, text: str) -> str:
        """A prompt's text as the model's training data was normalised (as `TextGenerator` does)."""
        return self.generator.normalize(text)

    def stop_ids(self, cfg: GenerationConfig) -> set[int]:
        """End of document and end of turn (unless ignore_eos), the given ids, and special tokens whose
        text is one of the stop strings."""
        ids = set(cfg.stop_token_ids) | (set() if cfg.ignore_eos else self._end_ids)
        to_token = getattr(self.tokenizer, "id_to_token", None)
        if to_token is not None:
            ids |= {i for i in self.special_ids if to_token(i) in cfg.stop_strings}
        return ids

    # ---- the engine thread

    def _loop(self) -> None:
        with torch.inference_mode():
            while True:
                with self._wake:
                    while not self._closing and not self._waiting and not self._active:
                        self._wake.wait()
                    if self._closing:
                        break
                    room = self.max_batch - len(self._active)
                    new = [self._waiting.popleft() for _ in range(min(room, len(self._waiting)))]
                    self._admitting = len(new)
                try:
                    self._turn([r for r in new if not r.cancelled.is_set()])
                except Exception as e:  # a failed step must not leave clients waiting forever
                    logger.exception("decode step failed; ending the requests in the batch")
                    self._fail([a.req for a in self._active] + new, f"generation failed: {e}")
                    self._active, self._cache, self._batch = [], None, None
        with self._wake:
            left, self._waiting = [a.req for a in self._active] + list(self._waiting), deque()
        self._fail(left, "the server is shutting down")
        self._active, self._cache, self._batch = [], None, None

    def _turn(self, new: list[Request]) -> None:
        if new:
            self._admit(new)
        self._admitting = 0
        self._leave([b for b, a in enumerate(self._active) if not a.req.cancelled.is_set()])
        if not self._active:
            return
        logits = step(self.steps.forward_model(), self.steps.native_step(), [a.last for a in self._active],
                      self._cache, self._batch)
        self.steps_run += 1
        keep = [b for b, a in enumerate(self._active) if not a.push(a.sampler(logits[b:b + 1])[0])]
        self._leave(keep)

    def _admit(self, new: list[Request]) -> None:
        """Prefill the new prompts together, sample their first tokens, join the rows that go on."""
        logits, cache, batch = prefill(self.steps.forward_model(), [r.prompt for r in new], self.pad_id, 0)
        rows: list[_Active | None] = []
        for b, req in enumerate(new):
            try:  # one request's settings that fail here end that request only, not the batch
                req.config.validate()
                text = RowText(self.tokenizer, self.stop_ids(req.config), req.config.stop_strings, self.special_ids,
                               req.config.skip_special_tokens)
                sampler = Sampler(req.config, [req.prompt], self.vocab_size, logits.device, utf8=self._utf8)
                rows.append(_Active(req, text, sampler))
            except (ValueError, TypeError, OverflowError, RuntimeError) as e:
                logger.warning("request refused when joining the batch: %s", e)
                self._fail([req], f"generation failed: {e}")
                rows.append(None)
        keep = [b for b, a in enumerate(rows) if a is not None and not a.push(a.sampler(logits[b:b + 1])[0])]
        if not keep:
            return
        if len(keep) < len(rows):
            batch.keep(keep, cache)
        rows = [rows[b] for b in keep]  # type: ignore[misc]  (None rows are never kept)
        spare = max(a.remaining for a in self._active + rows) + _SPARE
        if self._cache is None:
            self._cache, self._batch = realign(cache, batch, cache.length, cache.length + spare), batch
        else:
            self._cache, self._batch = join((self._cache, self._batch), (cache, batch), spare)
        with self._wake:
            self._active += rows
            self._admitting = 0
        self.max_rows_seen = max(self.max_rows_seen, len(self._active))

    def _leave(self, keep: list[int]) -> None:
        """Only the rows at `keep` stay; padding that every remaining row has is dropped."""
        if len(keep) == len(self._active):
            return
        with self._wake:
            self._active = [self._active[b] for b in keep]
        if not self._active:
            self._cache = self._batch = None
            return
        self._batch.keep(keep, self._cache)
        trim = min(self._batch.pads)
        if trim:
            self._cache = realign(self._cache, self._batch, self._cache.length - trim, self._cache.capacity - trim)

    def _fail(self, reqs: list[Request], message: str) -> None:
        for req in reqs:
            if not req.cancelled.is_set():
                req.sink(Event(finish="error", error=message))
