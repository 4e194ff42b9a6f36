"""Text generation: sampling filters, a KV-cached decode loop, UTF-8-safe streaming, batches, chat.

One loop serves everything. The prompt is prefilled once (logits of the last position only), then
tokens are decoded one at a time into a preallocated `KVCache`. Per-row state (stop tokens, stop
strings, the UTF-8 byte buffer) lives in a small `_RowText` object per batch row; finished rows are
dropped from the batch (`KVCache.select`) so they cost nothing afterwards.

The decode step does not call `GPT.forward`. On a CPU with a C compiler it is one call into
`native_decode.py`'s C step (the whole forward of one new token per row, every weight read once per
step, float32 or int8 weights); elsewhere (CUDA, MPS, bf16, no compiler, decode_backend="torch")
`_FastDecoder` runs the same math in PyTorch with fewer tensor ops than forward() (fused QKV and
gate/up projections, one RoPE over q and k together). A small model's step is mostly per-op overhead
and weight reads, not arithmetic. Tests check both against the model's full forward, token for token.
"""
from __future__ import annotations

import codecs
import dataclasses
import logging
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator, Sequence

import torch
import torch.nn.functional as F

from ..model.gpt import GPT, KVCache
from .native_decode import NativeDecoder, check_quantize, dequantize, load_library, projection_weights, quantize_int8

logger = logging.getLogger(__name__)

DECODE_BACKENDS = ("auto", "native", "torch")
# Fallback ids when a tokenizer lacks the attributes (minigpt's tokenizer has them all).
_EOS_ID, _IM_START_ID, _IM_END_ID, _PAD_ID = 0, 1, 2, 3


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

    def validate(self) -> None:
        """Raise ValueError naming the field when a value is out of range."""
        def bad(key: str, expected: str) -> ValueError:
            return ValueError(f"{key}: expected {expected}, got {getattr(self, key)!r}")

        if isinstance(self.max_new_tokens, bool) or not isinstance(self.max_new_tokens, int) or self.max_new_tokens <= 0:
            raise bad("max_new_tokens", "a positive integer")
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
        if self.seed is not None and (isinstance(self.seed, bool) or not isinstance(self.seed, int)):
            raise bad("seed", "an integer or None")

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


# --------------------------------------------------------------------------- logits processors
# All take float logits of shape (B, V) and return a tensor of the same shape (-inf = banned).


def apply_repetition_penalty(logits: torch.Tensor, seen: torch.Tensor, penalty: float) -> torch.Tensor:
    """CTRL / HF rule: for tokens already in the context, divide positive logits by `penalty`, multiply negative ones.

    seen: bool (B, V), True where the token occurs in the row's prompt or output.
    """
    if penalty == 1.0:
        return logits
    penalised = torch.where(logits > 0, logits / penalty, logits * penalty)
    return torch.where(seen, penalised, logits)


def ngram_bans(tokens: Sequence[int], n: int) -> list[int]:
    """Tokens that would complete an n-gram already present in `tokens` (HF no_repeat_ngram_size)."""
    if n <= 0 or len(tokens) < n:
        return []
    prefix = tuple(tokens[len(tokens) - n + 1:]) if n > 1 else ()
    bans = []
    for i in range(len(tokens) - n + 1):
        if tuple(tokens[i:i + n - 1]) == prefix:
            bans.append(tokens[i + n - 1])
    return bans


class _NgramIndex:
    """Incremental version of `ngram_bans` for one row: (n-1)-gram -> set of next tokens, O(1) per token."""

    def __init__(self, tokens: Sequence[int], n: int) -> None:
        self.n, self.tokens, self.table = n, list(tokens), {}
        for i in range(len(self.tokens) - n + 1):
            self.table.setdefault(tuple(self.tokens[i:i + n - 1]), set()).add(self.tokens[i + n - 1])

    def push(self, tok: int) -> None:
        self.tokens.append(tok)
        n = self.n
        if len(self.tokens) >= n:
            self.table.setdefault(tuple(self.tokens[-n:-1]), set()).add(tok)

    def banned(self) -> set[int]:
        n = self.n
        if len(self.tokens) < n - 1:
            return set()
        key = tuple(self.tokens[len(self.tokens) - n + 1:]) if n > 1 else ()
        return self.table.get(key, set())


def top_k_filter(logits: torch.Tensor, k: int) -> torch.Tensor:
    """Keep the k largest logits of each row (ties at the k-th value are kept)."""
    if k <= 0 or k >= logits.shape[-1]:
        return logits
    kth = torch.topk(logits, k, dim=-1).values[..., -1:]
    return logits.masked_fill(logits < kth, float("-inf"))


def _top_p_sorted(sorted_logits: torch.Tensor, p: float) -> torch.Tensor:
    """top_p_filter on logits already sorted in descending order along the last dim."""
    if p >= 1.0:
        return sorted_logits
    probs = sorted_logits.softmax(dim=-1)
    before = probs.cumsum(dim=-1) - probs  # probability mass strictly ahead of each token
    remove = before >= p
    remove[..., 0] = False
    return sorted_logits.masked_fill(remove, float("-inf"))


def top_p_filter(logits: torch.Tensor, p: float) -> torch.Tensor:
    """Nucleus filter: keep the smallest set of most likely tokens whose probability reaches p (at least one)."""
    if p >= 1.0:
        return logits
    sorted_logits, order = torch.sort(logits, dim=-1, descending=True)
    return torch.empty_like(logits).scatter_(-1, order, _top_p_sorted(sorted_logits, p))


def sample_from_logits(logits: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
    """One token per row from softmax(logits), by the exponential-race trick: argmax(p / Exp(1)).

    Same distribution as torch.multinomial, without its host sync; -inf logits are never drawn.
    """
    probs = logits.softmax(dim=-1)
    race = torch.empty_like(probs).exponential_(1.0, generator=generator)
    return (probs / race).argmax(dim=-1)


def greedy_tokens(logits: torch.Tensor) -> torch.Tensor:
    """argmax over the last dim (first index among ties, as torch's). On a CPU numpy's is ~8x faster for
    a batch-1 row: no parallel-reduction setup, which is a visible share of a ~0.3 ms decode step."""
    if logits.device.type == "cpu":
        return torch.from_numpy(logits.numpy().argmax(-1))
    return logits.argmax(dim=-1)


def process_logits(logits: torch.Tensor, cfg: GenerationConfig) -> torch.Tensor:
    """Temperature, top-k and top-p on (B, V) logits, in HF's order (penalties come before)."""
    logits = logits / cfg.temperature if cfg.temperature not in (0, 1) else logits
    logits = top_k_filter(logits, cfg.top_k)
    return top_p_filter(logits, cfg.top_p)


def candidate_logits(logits: torch.Tensor, cfg: GenerationConfig) -> tuple[torch.Tensor | None, torch.Tensor]:
    """process_logits restricted to the top-k candidates: (ids (B, k), their filtered logits (B, k)),
    or (None, process_logits(...)) when top-k is off or a tie at the k-th value would keep more than k.

    Every other token is -inf after process_logits anyway, so sampling among the k is the same draw;
    it skips sorting and scattering the whole vocabulary (~0.4 ms of a ~0.45 ms tiny step otherwise).
    """
    k = cfg.top_k
    if 0 < k < logits.shape[-1]:
        scaled = logits / cfg.temperature if cfg.temperature not in (0, 1) else logits
        vals, ids = torch.topk(scaled, k, dim=-1)  # sorted, descending
        if not bool((scaled >= vals[..., -1:]).sum(dim=-1).gt(k).any()):
            return ids, _top_p_sorted(vals, cfg.top_p)
    return None, process_logits(logits, cfg)


def sample_next(logits: torch.Tensor, cfg: GenerationConfig, generator: torch.Generator | None = None) -> torch.Tensor:
    """One sampled token id per row under temperature, top-k and top-p."""
    ids, vals = candidate_logits(logits, cfg)
    choice = sample_from_logits(vals, generator)
    return choice if ids is None else ids.gather(-1, choice.unsqueeze(-1)).squeeze(-1)


# --------------------------------------------------------------------------- fast decode step


def weights_signature(model: GPT) -> tuple:
    """Changes when any parameter is replaced or changed in place (its version counter moves), e.g. by
    more training: a decoder holding fused or rounded copies compares it to know it is stale."""
    return tuple((p.data_ptr(), p._version, p.dtype, p.device) for p in model.parameters())


class _FastDecoder:
    """One decode step (one new token per row) on a GPT's weights, with fewer tensor ops than forward().

    Holds fused copies of q/k/v and gate/up weights (rounded with quantize="int8"); `signature` says
    whether they still match the model (a parameter changed in place bumps its version counter, e.g.
    after more training). Also the prompt's prefill, and the weights the native step reads.
    """

    def __init__(self, model: GPT, quantize: str | None = None) -> None:
        cfg = model.config
        self.cfg = cfg
        self.signature = weights_signature(model)
        self.emb = model.embed_tokens.weight
        self.norm = model.norm.weight
        self.cos, self.sin = model.rope_cos, model.rope_sin
        self.fp32 = self.emb.dtype == torch.float32
        layers, self.head = projection_weights(model)
        if check_quantize(quantize) == "int8":
            # The same rounding as the native int8 step, computed in the model's dtype: batches and
            # non-CPU devices give what batch 1 gives (the speed gain is the native step's alone).
            def rounded(w: torch.Tensor) -> torch.Tensor:
                return dequantize(*quantize_int8(w)).to(w.dtype)

            layers = [(w_in, rounded(qkv), rounded(o), w_post, rounded(gu), rounded(down))
                      for w_in, qkv, o, w_post, gu, down in layers]
            self.head = rounded(self.head)
        self.layers = layers

    def _rms(self, x: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
        if self.fp32:
            return F.rms_norm(x, (x.shape[-1],), w, self.cfg.rms_norm_eps)
        # Low precision: normalise in fp32 exactly as RMSNorm.forward does.
        return w * F.rms_norm(x.float(), (x.shape[-1],), eps=self.cfg.rms_norm_eps).to(x.dtype)

    def __call__(self, tokens: torch.Tensor, cache: KVCache, positions: torch.Tensor | int,
                 attn_mask: torch.Tensor | None) -> torch.Tensor:
        """One decode step: tokens (B,) -> logits (B, V). Writes K/V at slot cache.length, advances it.

        positions: one int for every row, or a (B,) tensor (left-padded batches). attn_mask: bool
        (B, 1, 1, cache.length + 1) or None when every cached slot is valid for every row.
        """
        if not isinstance(positions, int):
            positions = positions.unsqueeze(1)
        return self.forward(tokens.unsqueeze(1), cache, positions, attn_mask)

    def forward(self, ids: torch.Tensor, cache: KVCache, positions: torch.Tensor | int = 0,
                attn_mask: torch.Tensor | None = None) -> torch.Tensor:
        """ids (B, T) written to cache slots cache.length.. -> logits (B, V) of the last position.

        positions: the first position (int, every row) or a (B, T) tensor. attn_mask: bool
        (B, 1, T, cache.length + T); None means causal over a cache that starts empty (a prefill)
        or, for T == 1, every cached slot valid. Unlike GPT.forward (which concatenates weights and folds
        norm weights at every call, for training), this reuses the fused copies made once.
        """
        cfg = self.cfg
        B, T = ids.shape
        H, KV, hd = cfg.n_heads, cfg.n_kv_heads, cfg.head_dim
        half = hd // 2
        slot = cache.length
        if attn_mask is None and T > 1 and slot != 0:
            raise ValueError("a multi-token step after the cache's start needs an explicit attn_mask")
        if isinstance(positions, int):
            cos = self.cos[positions:positions + T].view(1, T, 1, hd)
            sin = self.sin[positions:positions + T].view(1, T, 1, hd)
        else:
            cos, sin = self.cos[positions].unsqueeze(2), self.sin[positions].unsqueeze(2)  # (B, T, 1, hd)
        x = F.embedding(ids, self.emb)  # (B, T, d)
        for i, (w_in, w_qkv, w_o, w_post, w_gu, w_down) in enumerate(self.layers):
            qkv = F.linear(self._rms(x, w_in), w_qkv).view(B, T, H + 2 * KV, hd)
            qk = qkv[:, :, :H + KV]
            qk = qk * cos + torch.cat([-qk[..., half:], qk[..., :half]], dim=-1) * sin
            cache.keys[i][:, :, slot:slot + T] = qk[:, :, H:].transpose(1, 2)
            cache.values[i][:, :, slot:slot + T] = qkv[:, :, H + KV:].transpose(1, 2)
            y = F.scaled_dot_product_attention(
                qk[:, :, :H].transpose(1, 2), cache.keys[i][:, :, :slot + T], cache.values[i][:, :, :slot + T],
                attn_mask=attn_mask, is_causal=attn_mask is None and T > 1, enable_gqa=KV != H,
            )  # (B, H, T, hd)
            x = x + F.linear(y.transpose(1, 2).reshape(B, T, H * hd), w_o)
            gate, up = F.linear(self._rms(x, w_post), w_gu).chunk(2, dim=-1)
            x = x + F.linear(F.silu(gate) * up, w_down)
        cache.length = slot + T
        return F.linear(self._rms(x[:, -1], self.norm), self.head)


# --------------------------------------------------------------------------- per-row text


class _RowText:
    """Turns one row's token ids into text: UTF-8 safe, stop tokens and stop strings applied.

    `pending()` returns text that is final (complete characters, and no tail that could still turn
    out to be the start of a stop string); `text` is everything decided so far.
    """

    def __init__(self, tokenizer: Any, stop_ids: set[int], stop_strings: Sequence[str], special_ids: set[int],
                 skip_special: bool) -> None:
        self.tok = tokenizer
        self.stop_ids = stop_ids
        self.stop_strings = list(stop_strings)
        self.special_ids = special_ids
        self.skip_special = skip_special
        self.ids: list[int] = []
        self.done = False
        self.stop_reason = ""
        self.text = ""  # decoded complete characters (cut at a stop string once found)
        self._emitted = 0
        self._search_from = 0
        self._maxstop = max((len(s) for s in self.stop_strings), default=0)
        self._has_bytes = hasattr(tokenizer, "token_bytes")
        # An incremental decoder keeps an unfinished multi-byte character back until its last byte arrives.
        self._utf8 = codecs.getincrementaldecoder("utf-8")(errors="replace")
        self._text_ids: list[int] = []

    def _piece(self, tok: int) -> str:
        if tok in self.special_ids and self.skip_special:
            return ""
        if self._has_bytes:
            try:
                data = self.tok.token_bytes(tok)
            except (IndexError, KeyError):  # an id the model knows but the tokenizer does not
                data = b"\xef\xbf\xbd"
            return self._utf8.decode(data, final=False)
        # Generic tokenizer: decode all text ids, hold back a trailing U+FFFD (an incomplete character).
        self._text_ids.append(tok)
        full = self.tok.decode(self._text_ids, skip_special_tokens=self.skip_special)
        while full.endswith("\ufffd"):
            full = full[:-1]
        piece = full[len(self.text):] if full.startswith(self.text) else ""
        return piece

    def push(self, tok: int) -> bool:
        """Add one generated id; True when the row is finished."""
        self.ids.append(tok)
        if tok in self.stop_ids:
            self.done, self.stop_reason = True, "stop_token"
            self._flush()
            return True
        piece = self._piece(tok)
        if piece:
            self.text += piece
            if self.stop_strings:
                self._check_stop()
        return self.done

    def _flush(self) -> None:
        # An unfinished multi-byte character at the end (max_new_tokens hit mid-character) is dropped,
        # not shown as U+FFFD: half a character is never emitted, in a stream or in the final text.
        if self._has_bytes:
            self._utf8.reset()

    def _check_stop(self) -> None:
        start = max(0, self._search_from - self._maxstop + 1)
        hits = [i for i in (self.text.find(s, start) for s in self.stop_strings) if i >= 0]
        if hits:
            self.text = self.text[:min(hits)]
            self.done, self.stop_reason = True, "stop_string"
        self._search_from = len(self.text)

    def finish(self, reason: str) -> None:
        if not self.done:
            self.done, self.stop_reason = True, reason
            self._flush()

    def _holdback(self) -> int:
        """Length of the longest tail of text that is a proper prefix of a stop string."""
        if self.done or not self.stop_strings:
            return 0
        t = self.text
        for n in range(min(self._maxstop - 1, len(t)), 0, -1):
            tail = t[-n:]
            if any(s.startswith(tail) for s in self.stop_strings):
                return n
        return 0

    def pending(self) -> str:
        end = len(self.text) - self._holdback()
        if end <= self._emitted:
            return ""
        out = self.text[self._emitted:end]
        self._emitted = end
        return out


# --------------------------------------------------------------------------- the generator


class TextGenerator:
    """Generate text from a minigpt `GPT` and its tokenizer (seed 002's Python API)."""

    def __init__(self, model: GPT, tokenizer: Any, device: str | torch.device | None = None,
                 quantize: str | None = None, decode_backend: str = "auto") -> None:
        """quantize: None (the model's weights as they are) or "int8" (per-row int8 weights, for the
        prompt and every new token). decode_backend: "auto" (the C step of native_decode.py on a
        float32 CPU model, when it builds; else the PyTorch step), "native" (the C step or an error) or
        "torch"."""
        if decode_backend not in DECODE_BACKENDS:
            raise ValueError(f"decode_backend={decode_backend!r}: expected one of {', '.join(DECODE_BACKENDS)}")
        self.quantize = check_quantize(quantize)
        self.decode_backend = decode_backend
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
        self._decoder: _FastDecoder | None = None
        self._native: NativeDecoder | None = None
        self._native_source: _FastDecoder | None = None  # the PyTorch step whose weights _native reads
        self.last_stats: dict[str, Any] = {}

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
        ids = self.tokenizer.encode(prompt) if prompt else []
        if not ids:
            logger.warning("empty prompt: generating from <|endoftext|> (id %d), i.e. the start of a new document",
                           self.eos_id)
            ids = [self.eos_id]
        return ids

    def _fit_context(self, ids: list[int], max_new_tokens: int) -> list[int]:
        """Cut a prompt that leaves no room in the context from the left, keeping room to generate."""
        ctx = self.cfg.max_seq_len
        if len(ids) < ctx:
            return ids
        keep = ctx - max(1, min(max_new_tokens, ctx // 2))
        logger.warning("prompt has %d tokens, longer than the context (max_seq_len=%d): keeping its last %d tokens",
                       len(ids), ctx, keep)
        return ids[-keep:]

    def _stop_ids(self, cfg: GenerationConfig) -> set[int]:
        ids = set(cfg.stop_token_ids)
        if not cfg.ignore_eos:
            ids |= {self.eos_id, self.im_end_id}
        return ids

    # ---- the loop

    def _decoder_for_model(self) -> _FastDecoder:
        signature = weights_signature(self.model)
        if self._decoder is None or self._decoder.signature != signature:
            self._decoder = _FastDecoder(self.model, self.quantize)
        return self._decoder

    def _native_for_model(self, batch_size: int, torch_step: _FastDecoder) -> NativeDecoder | None:
        """The C decode step when it applies: float32 weights on the CPU, backend not "torch".

        It reads the PyTorch step's fused weights (re-quantising rounded int8 weights gives the same
        int8 values), so it is rebuilt exactly when that step is, and holds no second float32 copy."""
        if self.decode_backend == "torch":
            return None
        applies = self.device.type == "cpu" and self.model.embed_tokens.weight.dtype == torch.float32
        if applies and load_library() is not None:
            if self._native is None or self._native_source is not torch_step:
                self._native = NativeDecoder(self.model, self.quantize, fused=(torch_step.layers, torch_step.head))
                self._native_source = torch_step
            return self._native
        if self.decode_backend == "native":
            raise RuntimeError(
                "decode_backend='native' needs a float32 model on the CPU and a C compiler "
                f"(batch {batch_size}, {self.model.embed_tokens.weight.dtype} on {self.device}); "
                "use decode_backend='auto' to fall back to the PyTorch step")
        return None

    def _run(self, prompts: list[list[int]], cfg: GenerationConfig, rows: list[_RowText]) -> Iterator[None]:
        """The decode loop; yields after every step so callers can stream. Fills `rows` in place."""
        cfg.validate()
        model, dev = self.model, self.device
        B = len(prompts)
        prompts = [self._fit_context(p, cfg.max_new_tokens) for p in prompts]
        lens = [len(p) for p in prompts]
        T = max(lens)
        budget = min(cfg.max_new_tokens, self.cfg.max_seq_len - T)
        if budget < cfg.max_new_tokens:
            logger.warning("max_new_tokens=%d does not fit the context (max_seq_len=%d, prompt %d tokens): "
                           "generating at most %d", cfg.max_new_tokens, self.cfg.max_seq_len, T, budget)
        generator = None
        if cfg.seed is not None:
            generator = torch.Generator(device=dev)
            generator.manual_seed(cfg.seed)
        # Neither decode step calls model.forward, so the model's train/eval mode is left alone
        # (toggling it walks every module: ~1 ms a call on the tiny preset).
        t0 = time.perf_counter()
        n_generated = 0
        backend = "torch"
        try:
            # inference_mode is entered per block, never across a `yield`: the caller's code between
            # streamed pieces must not run in inference mode.
            with torch.inference_mode():
                ids = torch.full((B, T), self.pad_id, dtype=torch.long)
                for r, p in enumerate(prompts):
                    ids[r, T - len(p):] = torch.tensor(p, dtype=torch.long)
                ids = ids.to(dev)
                # The prompt goes through the PyTorch step's fused (and, with quantize, rounded) weights.
                prefill = self._decoder_for_model()
                dtype = next(model.parameters()).dtype
                cache = KVCache.empty(self.cfg, B, T + budget, dev, dtype)
                valid = None
                if min(lens) != T:
                    # Left padding: pad keys are masked out, real tokens get positions 0..len-1 as if alone.
                    valid = torch.zeros((B, T + budget), dtype=torch.bool, device=dev)
                    for r, n in enumerate(lens):
                        valid[r, T - n:] = True
                    positions = (valid[:, :T].long().cumsum(-1) - 1).clamp(min=0)
                    causal = torch.ones((T, T), dtype=torch.bool, device=dev).tril()
                    # The diagonal keeps pad queries from attending to nothing (a NaN softmax).
                    mask = (causal & valid[:, None, None, :T]) | torch.eye(T, dtype=torch.bool, device=dev)
                    logits = prefill.forward(ids, cache, positions, mask)
                    valid[:, T:] = True
                    step_pos: torch.Tensor | int = positions[:, -1] + 1
                else:
                    logits = prefill.forward(ids, cache)
                    step_pos = T
                logits = logits.float()
                seen = None
                if cfg.repetition_penalty != 1.0:
                    seen = torch.zeros((B, logits.shape[-1]), dtype=torch.bool, device=dev)
                    for r, p in enumerate(prompts):
                        seen[r, torch.tensor(p, device=dev)] = True
            ngrams = [_NgramIndex(p, cfg.no_repeat_ngram_size) for p in prompts] if cfg.no_repeat_ngram_size else None
            alive = list(range(B))  # batch position -> row index
            native = self._native_for_model(B, prefill)
            decoder = None if native is not None else prefill
            backend = "native" if native is not None else "torch"
            # The native step takes plain per-row lists: next position, and left-padding slots to skip.
            nat_pos, nat_pad = list(lens), [T - n for n in lens]
            for step in range(budget):
                with torch.inference_mode():
                    if seen is not None:
                        logits = apply_repetition_penalty(logits, seen, cfg.repetition_penalty)
                    if ngrams is not None:
                        for b in range(len(alive)):
                            banned = ngrams[b].banned()
                            if banned:
                                logits[b, list(banned)] = float("-inf")
                    if cfg.greedy:
                        nxt = greedy_tokens(logits)
                    else:
                        nxt = sample_next(logits, cfg, generator)
                    toks = nxt.tolist()  # the one host sync per step: stop checks and streaming need the ids
                n_generated += len(toks)
                keep = [b for b, (r, tok) in enumerate(zip(alive, toks)) if not rows[r].push(tok)]
                yield
                if not keep or step == budget - 1:
                    break
                with torch.inference_mode():
                    if len(keep) < len(alive):  # drop finished rows from every per-row tensor
                        idx = torch.tensor(keep, device=dev)
                        alive = [alive[b] for b in keep]
                        cache.select(idx)
                        nxt = nxt[idx]
                        if valid is not None:
                            valid, step_pos = valid[idx], step_pos[idx]
                        if seen is not None:
                            seen = seen[idx]
                        if ngrams is not None:
                            ngrams = [ngrams[b] for b in keep]
                        nat_pos, nat_pad = [nat_pos[b] for b in keep], [nat_pad[b] for b in keep]
                    if seen is not None:
                        seen[torch.arange(len(alive), device=dev), nxt] = True
                    if ngrams is not None:
                        for nb, ob in enumerate(keep):
                            ngrams[nb].push(toks[ob])
                    if native is not None:
                        logits = native.step([toks[b] for b in keep], nat_pos, cache, nat_pad)
                        nat_pos = [p + 1 for p in nat_pos]
                    else:
                        step_mask = None if valid is None else valid[:, None, None, :cache.length + 1]
                        logits = decoder(nxt, cache, step_pos, step_mask).float()
                        step_pos = step_pos + 1
            for row in rows:
                row.finish("max_new_tokens" if budget == cfg.max_new_tokens else "context_full")
        finally:
            dt = time.perf_counter() - t0
            self.last_stats = {"new_tokens": n_generated, "seconds": dt,
                               "tokens_per_s": n_generated / dt if dt > 0 else 0.0, "batch_size": B,
                               "backend": backend, "quantize": self.quantize,
                               "prompt_tokens": sum(lens)}

    def _rows(self, n: int, cfg: GenerationConfig) -> list[_RowText]:
        stop = self._stop_ids(cfg)
        strings = list(cfg.stop_strings)
        for s in list(strings):  # a special token's text given as a stop string stops at that token
            for i in self.special_ids:
                try:
                    if self.tokenizer.id_to_token(i) == s:
                        stop.add(i)
                except Exception:  # a tokenizer without id_to_token: keep the string
                    pass
        return [_RowText(self.tokenizer, stop, strings, self.special_ids, cfg.skip_special_tokens) for _ in range(n)]

    # ---- public API

    def generate_ids(self, prompt_ids: Sequence[int] | Sequence[Sequence[int]], config: GenerationConfig | None = None
                     ) -> list[int] | list[list[int]]:
        """Token ids in, generated ids out (a final stop token included). A list of lists is a batch."""
        cfg = config or GenerationConfig()
        batch = bool(prompt_ids) and isinstance(prompt_ids[0], (list, tuple))
        prompts = [list(p) or [self.eos_id] for p in (prompt_ids if batch else [prompt_ids])]
        rows = self._rows(len(prompts), cfg)
        for _ in self._run(prompts, cfg, rows):
            pass
        out = [r.ids for r in rows]
        return out if batch else out[0]

    def stream_ids(self, prompt_ids: Sequence[int], config: GenerationConfig | None = None) -> Iterator[str]:
        """Text pieces as they become final, for a prompt given as token ids (e.g. a chat template)."""
        cfg = config or GenerationConfig()
        rows = self._rows(1, cfg)
        row = rows[0]
        for _ in self._run([list(prompt_ids) or [self.eos_id]], cfg, rows):
            piece = row.pending()
            if piece:
                yield piece
        piece = row.pending()
        if piece:
            yield piece

    def stream(self, prompt: str, config: GenerationConfig | None = None) -> Iterator[str]:
        """Yield text pieces as they are generated; never half of a multi-byte character."""
        return self.stream_ids(self.encode_prompt(prompt), config)

    def generate(self, prompt: str, config: GenerationConfig | None = None, stream: bool = False,
                 callback: Callable[[str], None] | None = None) -> str:
        """The generated continuation (without the prompt). With stream=True or a callback, each piece
        is passed to `callback` (default: nothing) as soon as it is final."""
        pieces = []
        for piece in self.stream(prompt, config):
            pieces.append(piece)
            if callback is not None:
                callback(piece)
        return "".join(pieces)

    def batch_generate(self, prompts: Sequence[str], config: GenerationConfig | None = None,
                       batch_size: int = 8) -> list[str]:
        """Continuations of several prompts, `batch_size` at a time (left padding, per-row stopping)."""
        cfg = config or GenerationConfig()
        if isinstance(prompts, str):
            raise TypeError("prompts: expected a list of strings, got one string (use generate)")
        out: list[str] = []
        for i in range(0, len(prompts), max(1, batch_size)):
            chunk = [self.encode_prompt(p) for p in prompts[i:i + batch_size]]
            rows = self._rows(len(chunk), cfg)
            for _ in self._run(chunk, cfg, rows):
                pass
            out.extend(r.text for r in rows)
        return out

    def chat_prompt_ids(self, messages: list[dict], config: GenerationConfig | None = None) -> list[int]:
        """The ChatML prompt; the oldest turns (after a system message) are dropped when it overflows the context."""
        cfg = config or GenerationConfig()
        msgs = list(messages)
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

    def chat(self, messages: list[dict], config: GenerationConfig | None = None, stream: bool = False,
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
        self.history.append({"role": "user", "content": user_text})
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


# --------------------------------------------------------------------------- benchmark


# The sampled rows of the benchmark: notebook 05's defaults, in both libraries.
BENCH_SAMPLING = {"temperature": 0.8, "top_k": 50, "top_p": 0.9}


def _time_minigpt(gen: TextGenerator, prompts: list[list[int]], new_tokens: int, sample: bool = False) -> float:
    cfg = GenerationConfig(max_new_tokens=new_tokens, do_sample=sample, ignore_eos=True, seed=0 if sample else None,
                           **(BENCH_SAMPLING if sample else {}))
    t = time.perf_counter()
    out = gen.generate_ids(prompts if len(prompts) > 1 else prompts[0], cfg)
    dt = time.perf_counter() - t
    n = sum(len(o) for o in out) if len(prompts) > 1 else len(out)
    return n / dt


def _time_hf(hf_model: Any, prompts: list[list[int]], new_tokens: int, sample: bool = False) -> float:
    ids = torch.tensor(prompts, dtype=torch.long)
    with torch.inference_mode():
        t = time.perf_counter()
        out = hf_model.generate(ids, attention_mask=torch.ones_like(ids), do_sample=sample, max_new_tokens=new_tokens,
                                min_new_tokens=new_tokens, pad_token_id=_PAD_ID, **(BENCH_SAMPLING if sample else {}))
        dt = time.perf_counter() - t
    return len(prompts) * (out.shape[1] - ids.shape[1]) / dt


def weight_read_floor(model: GPT, repeats: int = 50) -> float:
    """Tokens/s if a batch-1 step did nothing but read the float32 projection and head weights once:
    an estimate of the float32 ceiling (the fastest of `repeats` sums over one flat copy; memory speed
    on a shared machine varies, so a decoder can land a little above it in one run)."""
    layers, head = projection_weights(model)
    flat = torch.cat([w.detach().float().flatten() for layer in layers for w in layer if w.dim() == 2]
                     + [head.detach().float().flatten()])
    best = float("inf")
    with torch.inference_mode():
        flat.sum()
        for _ in range(repeats):
            t = time.perf_counter()
            flat.sum()
            best = min(best, time.perf_counter() - t)
    return 1.0 / best


def bench_generate(model: GPT, tokenizer: Any, hf_dir: str | Path | None = None, prompt: str = "长江、黄河",
                   new_tokens: int = 64, batch_sizes: Sequence[int] = (1, 8), repeats: int = 3,
                   threads: int | None = None) -> dict:
    """Greedy decode tokens/s of minigpt (and of `transformers` generate on `hf_dir`, the exported
    folder of the same model, when transformers is installed) with the same prompt in the same process;
    best of `repeats`, interleaved.

    At batch 1 more variants run: "int8" (the native step on int8 weights), "torch_step" (float32, the
    PyTorch decode step instead of the native one), and "sample" against "hf_sample" (BENCH_SAMPLING
    instead of greedy), to show what each part buys.
    Returns {"minigpt": {B: tok/s}, "hf": {B: tok/s}, "ratio": {B: x}, "int8": {1: tok/s},
    "ratio_int8": {1: x}, "torch_step": {1: tok/s}, "sample": {1: tok/s}, "hf_sample": {1: tok/s},
    "ratio_sample": {1: x}, "backend": {B: name}, "fp32_read_floor": tok/s} (hf/ratios only with hf_dir).
    """
    import importlib.util

    if threads:
        torch.set_num_threads(threads)
    fp32 = TextGenerator(model, tokenizer)
    # name -> (generator or None for transformers, sampled?); names after the first two run at batch 1 only
    variants: dict[str, tuple[TextGenerator | None, bool]] = {
        "minigpt": (fp32, False), "hf": (None, False), "int8": (TextGenerator(model, tokenizer, quantize="int8"), False),
        "torch_step": (TextGenerator(model, tokenizer, decode_backend="torch"), False), "sample": (fp32, True),
        "hf_sample": (None, True)}
    # The ratios the table shows: variant -> the transformers run it is compared with.
    ratios = {"ratio": ("minigpt", "hf"), "ratio_int8": ("int8", "hf"), "ratio_sample": ("sample", "hf_sample")}
    hf_model = None
    if hf_dir is not None and importlib.util.find_spec("transformers") is None:
        logger.warning("transformers is not installed (pip install -e '.[hf]'): timing minigpt alone")
    elif hf_dir is not None:
        from transformers import AutoModelForCausalLM

        hf_model = AutoModelForCausalLM.from_pretrained(str(hf_dir), dtype=torch.float32).eval()
    prompt_ids = fp32.encode_prompt(prompt)
    res: dict[str, Any] = {"threads": torch.get_num_threads(), "new_tokens": new_tokens, "prompt_tokens": len(prompt_ids),
                           "backend": {}, **{k: {} for k in [*variants, *ratios]}}

    def timed(name: str, prompts: list[list[int]], n: int) -> float:
        gen, sample = variants[name]
        return _time_hf(hf_model, prompts, n, sample) if gen is None else _time_minigpt(gen, prompts, n, sample)

    for b in batch_sizes:
        prompts = [list(prompt_ids) for _ in range(b)]
        names = [k for i, (k, (gen, _)) in enumerate(variants.items())
                 if (b == 1 or i < 2) and (gen is not None or hf_model is not None)]
        for k in names:
            timed(k, prompts, 4)  # warm-up (allocator, first-call dispatch, building the C step)
        times: dict[str, list[float]] = {k: [] for k in names}
        # Interleaved, best of `repeats`: on a shared machine all see the same background load.
        for _ in range(repeats):
            for k in names:
                times[k].append(timed(k, prompts, new_tokens))
        for k in names:
            res[k][b] = max(times[k])
        for r, (mine, theirs) in ratios.items():
            if b in res[mine] and b in res[theirs]:
                res[r][b] = res[mine][b] / res[theirs][b]
        res["backend"][b] = fp32.last_stats.get("backend")
        logger.info("batch %d: %s", b, ", ".join(f"{k} {max(v):.0f} tok/s" for k, v in times.items()))
    res["fp32_read_floor"] = weight_read_floor(model)
    return res
