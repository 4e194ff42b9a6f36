"""Tokenizers that came with a pretrained model (`python -m minigpt.convert`): special tokens found by name,
and the folder's own Jinja chat template rendered as transformers renders it.

minigpt's own tokenizers put <|endoftext|>, <|im_start|>, <|im_end|>, <|pad|> at ids 0-3. An imported one
(Qwen's, SmolLM2's, MiniMind's) keeps its ids: they are looked up by name here. Its chat template is used
as it is: `ChatTemplate.segments` renders the conversation to text, tokenizes the whole string (special
tokens matched, as `AutoTokenizer.apply_chat_template` does), and marks as assistant targets the tokens
that overlap each reply's content and its closing <|im_end|> (found by character offsets).

The folder's tokenizer_config.json carries ``IMPORT_KEY`` (written by the import), which is how
`MiniTokenizer.load` knows to take this path.
"""
from __future__ import annotations

import json
import logging
from datetime import datetime
from typing import Any, Sequence

from .special import EOS_TOKEN, IM_END_TOKEN, IM_START_TOKEN, PAD_TOKEN

logger = logging.getLogger(__name__)

IMPORT_KEY = "minigpt_import"  # in tokenizer_config.json: {"architecture", "source"} of the imported model
CHAT_SPECIALS = (IM_START_TOKEN, IM_END_TOKEN)


def _token_text(value: Any) -> str | None:
    """A tokenizer_config.json special-token entry: a string or an AddedToken-like {"content": ...}."""
    if isinstance(value, dict):
        value = value.get("content")
    return value if isinstance(value, str) and value else None


def special_token_ids(tok: Any, config: dict, where: str) -> dict[str, Any]:
    """eos / pad / im_start / im_end ids of an imported ``tokenizers.Tokenizer``, by name.

    eos is <|endoftext|> (the end of a document) when the vocabulary has it, else the config's eos_token;
    pad is <|pad|>, else the config's pad_token, else eos. im_start / im_end are None when absent (such a
    tokenizer works for pretraining; `ChatTemplate` refuses chat with it, naming what is missing).
    special_ids: every added token marked special (skipped when decoding with skip_special_tokens).
    """
    def lookup(name: str | None) -> int | None:
        return tok.token_to_id(name) if name else None

    eos = lookup(EOS_TOKEN)
    if eos is None:
        eos = lookup(_token_text(config.get("eos_token")))
    if eos is None:
        raise ValueError(f"{where}: the tokenizer has no {EOS_TOKEN} and tokenizer_config.json names no eos_token "
                         "in its vocabulary; expected an end-of-text token")
    pad = lookup(PAD_TOKEN)
    if pad is None:
        pad = lookup(_token_text(config.get("pad_token")))
    specials = {i for i, t in tok.get_added_tokens_decoder().items() if t.special}
    return {"eos_id": eos, "pad_id": eos if pad is None else pad, "im_start_id": lookup(IM_START_TOKEN),
            "im_end_id": lookup(IM_END_TOKEN), "special_ids": frozenset(specials | {eos})}


def _tojson(value: Any, ensure_ascii: bool = False, indent: int | None = None, separators: Any = None,
            sort_keys: bool = False) -> str:
    return json.dumps(value, ensure_ascii=ensure_ascii, indent=indent, separators=separators, sort_keys=sort_keys)


def _raise(message: str) -> None:
    raise ValueError(f"chat template: {message}")


class ChatTemplate:
    """An imported tokenizer's Jinja chat template, rendered and tokenized as transformers does."""

    def __init__(self, template: str | None, tokenizer_json: str, config: dict, ids: dict[str, Any], where: str) -> None:
        from tokenizers import Tokenizer

        self.where = where
        self.template = template
        missing = [name for name, key in zip(CHAT_SPECIALS, ("im_start_id", "im_end_id")) if ids[key] is None]
        self.problem = None
        if missing:
            self.problem = (f"{where}: the tokenizer has no {' and no '.join(missing)}; chat (notebooks 04 SFT, 05 chat, "
                            f"07 align, the server) needs ChatML's {IM_START_TOKEN} and {IM_END_TOKEN} as tokens")
        elif not template:
            self.problem = f"{where}/tokenizer_config.json: no chat_template; chat needs the model's ChatML template"
        # A copy that matches special tokens (as HF's tokenizer does) and reports untrimmed character offsets.
        spec = json.loads(tokenizer_json)
        spec["post_processor"] = None
        self._tok = Tokenizer.from_str(json.dumps(spec))
        self._tok.encode_special_tokens = False
        self._context = {k: _token_text(config.get(k)) for k in ("bos_token", "eos_token", "pad_token", "unk_token")}
        self._compiled = None

    def _check(self) -> None:
        if self.problem:
            raise ValueError(self.problem)

    def render(self, messages: Sequence[dict], add_generation_prompt: bool = False) -> str:
        """The template's text for `messages` (as transformers' apply_chat_template(tokenize=False) renders it)."""
        self._check()
        if self._compiled is None:
            from jinja2.ext import loopcontrols
            from jinja2.sandbox import ImmutableSandboxedEnvironment

            # the settings transformers renders chat templates with
            env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True, extensions=[loopcontrols])
            env.filters["tojson"] = _tojson
            env.globals["raise_exception"] = _raise
            env.globals["strftime_now"] = lambda fmt: datetime.now().strftime(fmt)
            self._compiled = env.from_string(self.template)
        return self._compiled.render(messages=list(messages), add_generation_prompt=add_generation_prompt, **self._context)

    def segments(self, messages: Sequence[dict], add_generation_prompt: bool = False) -> list[tuple[list[int], bool]]:
        """(ids, is_assistant_target) pieces whose concatenation is the rendered text's ids; a target is a token
        overlapping an assistant reply's content or its closing <|im_end|>."""
        text = self.render(messages, add_generation_prompt)
        spans, cursor = [], 0
        for k, m in enumerate(messages):
            header = text.find(IM_START_TOKEN + m["role"], cursor)
            start = text.find(m["content"], header) if header >= 0 else -1
            if start < 0:
                raise ValueError(f"{self.where}: the chat template does not render messages[{k}] ({m['role']}) "
                                 "as <|im_start|>role ... content; assistant-only loss needs each content as it is")
            cursor = start + len(m["content"])
            if m["role"] == "assistant":
                end = text.find(IM_END_TOKEN, cursor)
                if end < 0:
                    raise ValueError(f"{self.where}: the chat template closes messages[{k}] without {IM_END_TOKEN}")
                cursor = end + len(IM_END_TOKEN)
                spans.append((start, cursor))
        enc = self._tok.encode(text, add_special_tokens=False)
        pieces: list[tuple[list[int], bool]] = []
        span = 0
        for tid, (s, e) in zip(enc.ids, enc.offsets):
            while span < len(spans) and spans[span][1] <= s:
                span += 1
            target = span < len(spans) and e > spans[span][0] and s < spans[span][1]
            if pieces and pieces[-1][1] == target:
                pieces[-1][0].append(tid)
            else:
                pieces.append(([tid], target))
        return pieces
