# ---
# jupyter:
#   jupytext:
#     formats: ipynb,py:percent
#     text_representation:
#       extension: .py
#       format_name: percent
#       format_version: '1.3'
#       jupytext_version: 1.19.7
#   kernelspec:
#     display_name: Python 3
#     language: python
#     name: python3
# ---

# %% [markdown]
# # 02 · Train the tokenizer and write token files
#
# A byte-level BPE (Hugging Face `tokenizers`) is trained on the cleaned train split. Byte-level
# means any text round-trips exactly, Chinese, English, emoji or control characters alike. The
# tokenizer is saved as JSON files that `transformers.AutoTokenizer` loads as they are, with the
# ChatML chat template in `tokenizer_config.json`. Never a pickle.
#
# Then every document is encoded and written to flat `uint16` token files (`train.bin`, `val.bin`)
# that training reads through a memory map, with `meta.json` recording the tokenizer's SHA-256.

# %% tags=["parameters"]
# Parameters: plain literals only. None means "take it from params/<config>.yaml".
config = None
run_dir = None
tokenizer_vocab_size = None   # 6400 by default, MiniMind's size
tokenizer_samples = None      # documents to train on, 0 means all
min_frequency = None
retrain_tokenizer = None      # False reuses an existing tokenizer

# %%
from minigpt.params import load_params, validate_dataclass
from minigpt.data.tokenizer import TokenizerConfig, build_tokenizer, quality_report, quality_tables, iter_texts, render_tokens_html

P = load_params("tokenizer", globals())
tok_cfg = P.build(TokenizerConfig)
validate_dataclass(tok_cfg)

# %% [markdown]
# ## Train (or reuse) the tokenizer
# The special tokens have fixed ids, documented in the README.

# %%
# NBVAL_CHECK_OUTPUT
tok = build_tokenizer(P.paths["data"], P.paths["tokenizer"], tok_cfg)
print("vocab size:", tok.vocab_size)
for t in ("<|endoftext|>", "<|im_start|>", "<|im_end|>", "<|pad|>"):
    print(f"{t:>15} -> {tok.backend.token_to_id(t)}")

# %% [markdown]
# ## Quality report on the validation text
# Exact round trip, characters per token for Chinese and English, vocabulary use, the longest
# tokens, and how much shorter the sequences are than with one token per character.

# %%
val_texts = list(iter_texts(P.paths["data"] / "val.jsonl"))
report = quality_report(tok, val_texts)
tables = quality_tables(report)
assert report["round_trip"]["failures"] == 0, "decode(encode(x)) != x on some val text"
for name, table in tables.items():
    print(f"\n== {name} ==")
    display(table)

# %% [markdown]
# Token boundaries, made visible:

# %%
from IPython.display import HTML

HTML("".join(render_tokens_html(tok, t) for t in val_texts[:3]))

# %% [markdown]
# ## Encode the corpus to token files
# Batches are encoded in parallel and written in chunks; an interrupted run resumes and produces
# identical files.

# %%
from minigpt.data.packing import pack_corpus

meta = pack_corpus(P.paths["data"], tok, P.paths["tokens"])

# %%
# NBVAL_CHECK_OUTPUT
for split in ("train", "val"):
    m = meta["splits"][split]
    print(f"{split}: {m['num_tokens']:,} tokens ({meta['dtype']}), {m['num_chars'] / m['num_tokens']:.2f} chars/token")
