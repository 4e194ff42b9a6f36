"""Byte-level BPE tokenizer: train, save/load (JSON only), ChatML chat template, quality report.

The saved folder (``runs/R/tokenizer/``) is a Hugging Face tokenizer folder as it is:
``tokenizer.json`` + ``tokenizer_config.json`` (with the ChatML ``chat_template``) +
``special_tokens_map.json``, so ``transformers.AutoTokenizer.from_pretrained(folder)`` loads it.

Special tokens have fixed ids (see ``SPECIAL_TOKENS``)::

    0 <|endoftext|>   document separator (eos); generation from an empty prompt starts here
    1 <|im_start|>    ChatML: start of a message
    2 <|im_end|>      ChatML: end of a message (end of an assistant reply)
    3 <|pad|>         padding only, never trained on

Ids 4..259 are the 256 byte tokens; merges follow.

Chat template (Qwen-style ChatML, no default system prompt)::

    <|im_start|>{role}\\n{content}<|im_end|>\\n      per message
    <|im_start|>assistant\\n                       generation prompt

Safety: ``MiniTokenizer.encode`` never produces special ids from user text (the literal
string ``<|im_end|>`` is encoded as ordinary bytes), so user text can't inject control tokens.
Hugging Face's ``apply_chat_template`` renders a string first and then tokenizes it, matching special
strings anywhere; so the saved template escapes ``<|`` in roles and contents with the noncharacter
U+FDD0 and tokenizer.json's normalizer removes it after special tokens were matched: through
``transformers`` a message gets exactly the ids minigpt's own template gives. Raw text passed to the
HF tokenizer directly (not through the template) *is* matched, as transformers does by design; load it
with ``split_special_tokens=True`` for untrusted text. ``harden_hf_folder`` brings a folder saved
before the escape existed up to date (the export calls it).

Modules: ``special`` (special tokens, chat template, HF config), ``config`` (TokenizerConfig),
``minitokenizer`` (MiniTokenizer: encode, decode, ChatML), ``corpus`` (reading the cleaned
JSONL), ``training`` (train, build or reuse), ``report`` (quality report, token rendering), ``fast_encode``
(the native BPE encoder that packs token files with exactly ``encode_batch``'s ids).
"""

from .config import TokenizerConfig
from .corpus import DATA_NOTEBOOK, conversation_text, iter_jsonl, iter_texts
from .minitokenizer import MiniTokenizer
from .report import quality_report, quality_tables, render_tokens_html, render_tokens_text, token_pieces
from .special import (
    BOS_ID, CHAT_ROLES, CHAT_TEMPLATE, EOS_ID, EOS_TOKEN, ESCAPE_MARK, IM_END_ID, IM_END_TOKEN, IM_START_ID,
    IM_START_TOKEN, MIN_VOCAB_SIZE, MODEL_MAX_LENGTH, NUM_BYTES, PAD_ID, PAD_TOKEN, SPECIAL_TOKENS, TOKENIZER_FILES,
    harden_hf_folder, hf_tokenizer_config,
)
from .training import build_tokenizer, train_tokenizer, training_texts

__all__ = [
    "BOS_ID", "CHAT_ROLES", "CHAT_TEMPLATE", "DATA_NOTEBOOK", "EOS_ID", "EOS_TOKEN", "ESCAPE_MARK", "harden_hf_folder", "IM_END_ID", "IM_END_TOKEN",
    "IM_START_ID", "IM_START_TOKEN", "MIN_VOCAB_SIZE", "MODEL_MAX_LENGTH", "NUM_BYTES", "PAD_ID", "PAD_TOKEN",
    "SPECIAL_TOKENS", "TOKENIZER_FILES", "MiniTokenizer", "TokenizerConfig", "build_tokenizer", "conversation_text",
    "hf_tokenizer_config", "iter_jsonl", "iter_texts", "quality_report", "quality_tables", "render_tokens_html",
    "render_tokens_text", "token_pieces", "train_tokenizer", "training_texts",
]
