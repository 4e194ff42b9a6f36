"""Special tokens with fixed ids, the ChatML template, and the Hugging Face tokenizer folder's config."""

from __future__ import annotations

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

# Jinja rendering exactly <|im_start|>{role}\n{content}<|im_end|>\n per message.
CHAT_TEMPLATE = (
    "{%- for message in messages %}"
    "{{- '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>' + '\\n' }}"
    "{%- endfor %}"
    "{%- if add_generation_prompt %}{{- '<|im_start|>assistant\\n' }}{%- endif %}"
)

TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json")


def hf_tokenizer_config() -> dict:
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
        "split_special_tokens": False,
    }


def special_tokens_map() -> dict:
    return {"eos_token": EOS_TOKEN, "pad_token": PAD_TOKEN, "additional_special_tokens": [IM_START_TOKEN, IM_END_TOKEN]}
