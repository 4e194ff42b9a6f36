"""Special tokens with fixed ids, the ChatML template, and the Hugging Face tokenizer folder's config."""

from __future__ import annotations

import json
import os
from pathlib import Path

from ...atomic import atomic_write_text

EOS_TOKEN = "<|endoftext|>"
IM_START_TOKEN = "<|im_start|>"
IM_END_TOKEN = "<|im_end|>"
PAD_TOKEN = "<|pad|>"
SPECIAL_TOKENS: list[str] = [EOS_TOKEN, IM_START_TOKEN, IM_END_TOKEN, PAD_TOKEN]
EOS_ID = 0
BOS_ID = 0  # generation from an empty prompt starts from <|endoftext|>
IM_START_ID = 1
IM_END_ID = 2
PAD_ID = 3
NUM_BYTES = 256
MIN_VOCAB_SIZE = NUM_BYTES + len(SPECIAL_TOKENS)  # 260
MODEL_MAX_LENGTH = 32768  # a generous default for HF; the export step may overwrite it
CHAT_ROLES = ("system", "user", "assistant")

# Injection guard for transformers: the template writes U+FDD0 (a noncharacter, removed by normalize())
# after every "<" of "<|" in a role or content, so a special token's text typed by a user is not matched
# as that token when the rendered string is tokenized; the tokenizer's normalizer (ESCAPE_NORMALIZER)
# removes the mark again *after* special tokens were matched, so the text becomes the same byte tokens
# minigpt's own encode gives it.
ESCAPE_MARK = "\ufdd0"
ESCAPE_NORMALIZER = {"type": "Replace", "pattern": {"String": ESCAPE_MARK}, "content": ""}
_ESC = "| replace('<|', '<" + ESCAPE_MARK + "|')"

# Jinja rendering exactly <|im_start|>{role}\n{content}<|im_end|>\n per message (special-token text escaped).
CHAT_TEMPLATE = (
    "{%- for message in messages %}"
    "{{- '<|im_start|>' + (message['role'] " + _ESC + ") + '\\n' + (message['content'] " + _ESC + ") + "
    "'<|im_end|>' + '\\n' }}"
    "{%- endfor %}"
    "{%- if add_generation_prompt %}{{- '<|im_start|>assistant\\n' }}{%- endif %}"
)

TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json")


def hf_tokenizer_config(normalize_version: int | None = None) -> dict:
    """tokenizer_config.json: special tokens, the escaping ChatML template, and the text normalisation
    version of the data the tokenizer was trained on (``normalize_version``; None = not recorded)."""
    added = {
        str(i): {"content": s, "lstrip": False, "normalized": False, "rstrip": False, "single_word": False, "special": True}
        for i, s in enumerate(SPECIAL_TOKENS)
    }
    return {
        "tokenizer_class": "PreTrainedTokenizerFast",
        "added_tokens_decoder": added,
        "bos_token": None,  # nothing is prepended automatically; generation starts from eos
        "eos_token": EOS_TOKEN,
        "pad_token": PAD_TOKEN,
        "unk_token": None,  # byte-level: every input is representable
        "additional_special_tokens": [IM_START_TOKEN, IM_END_TOKEN],
        "chat_template": CHAT_TEMPLATE,
        "model_max_length": MODEL_MAX_LENGTH,
        "clean_up_tokenization_spaces": False,  # else HF decode would alter " ." and round trips break
        "add_prefix_space": False,
        "split_special_tokens": False,  # the template's own markers must stay special; content is escaped
        **({"normalize_version": normalize_version} if normalize_version is not None else {}),
    }


def harden_hf_folder(folder: str | os.PathLike) -> None:
    """Make a Hugging Face tokenizer folder written by an earlier minigpt safe against special-token
    injection through ``apply_chat_template``: the current (escaping) chat template, and the normalizer
    that removes the escape mark, added to tokenizer.json when it has none. Token ids of ordinary text
    do not change."""
    folder = Path(folder)
    tj, tc = folder / "tokenizer.json", folder / "tokenizer_config.json"
    data = json.loads(tj.read_text(encoding="utf-8"))
    if data.get("normalizer") is None:
        data["normalizer"] = ESCAPE_NORMALIZER
        atomic_write_text(tj, json.dumps(data, ensure_ascii=False, indent=1))
    conf = json.loads(tc.read_text(encoding="utf-8"))
    if conf.get("chat_template") != CHAT_TEMPLATE:
        conf["chat_template"] = CHAT_TEMPLATE
        atomic_write_text(tc, json.dumps(conf, ensure_ascii=False, indent=2))


def special_tokens_map() -> dict:
    return {"eos_token": EOS_TOKEN, "pad_token": PAD_TOKEN, "additional_special_tokens": [IM_START_TOKEN, IM_END_TOKEN]}
