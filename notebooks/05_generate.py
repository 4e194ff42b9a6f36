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
# # 05 · Generate, evaluate, export
#
# Load a checkpoint and sample from it: temperature, top-k and top-p shape the next-token
# distribution, and a KV cache means each new token costs one small forward pass instead of
# re-reading the whole prompt. Then measure the model (perplexity and bits per character on the
# validation split) and export it as a `transformers` folder that loads anywhere (Llama, or Qwen3 for a model with
# QK-norm such as tiny).

# %% tags=["parameters"]
# Parameters: plain literals only. None means "take it from params/<config>.yaml" (its `generate:` block).
config = None
run_dir = None
checkpoint = None        # default: the SFT model if there is one, else the pretrained one
prompt = None
temperature = None
top_k = None
top_p = None
repetition_penalty = None
max_new_tokens = None
prompts_file = None      # one prompt a line, for batch generation
export_dir = None        # default: runs/<run>/hf
quantize = None          # "int8": int8 weights for the decode steps (about 4x fewer bytes to read a token)
decode_backend = None    # "auto" (the C step on a CPU), "native" or "model" (GPT.forward with the KV cache)

# %%
# NBVAL_CHECK_OUTPUT
from pathlib import Path

from minigpt.params import load_params
from minigpt.infer.generate import GenerationConfig, TextGenerator, read_prompts_file
from minigpt.train.checkpoint import load_checkpoint

P = load_params("generate", globals())
gen_cfg = P.build(GenerationConfig)  # checked once, as it is made: a bad value stops here naming the key
sft_model = P.paths["sft"] / "final_model"
ckpt_dir = Path(P.checkpoint) if P.checkpoint else (sft_model if sft_model.is_dir() else P.paths["pretrain"] / "final_model")
model, tokenizer, model_cfg = load_checkpoint(ckpt_dir)
gen = TextGenerator(model, tokenizer, quantize=P.quantize or None, decode_backend=P.decode_backend)
print(f"loaded {ckpt_dir.relative_to(P.run_dir)}: {model.num_params():,} parameters")

# %% [markdown]
# ## Sample
# One completion with the parameters above, then the same prompt streamed token by token
# (the stream never emits half of a multi-byte character).

# %%
print(gen.generate(P.prompt, gen_cfg))

# %%
for piece in gen.stream(P.prompt, gen_cfg.replace(seed=0)):
    print(piece, end="", flush=True)
print()

# %% [markdown]
# ## Batch and chat
# Batches are left-padded with an attention mask and each row stops on its own.
# Chat goes through the tokenizer's ChatML template, with history.

# %%
prompts = read_prompts_file(P.prompts_file) if P.prompts_file else ["中国", "长江、", "你好，好久不见"]
for p, out in zip(prompts, gen.batch_generate(prompts, gen_cfg.replace(do_sample=False))):
    print(f"{p!r} -> {out!r}")

# %%
history = [{"role": "user", "content": P.chat_message}]
reply = gen.chat(history, gen_cfg)
print("user:", P.chat_message)
print("assistant:", reply)

# %% [markdown]
# ## Evaluate
# Perplexity and bits per character on the validation split. Bits per character do not depend on
# the tokenizer, so runs with different vocabularies can be compared.

# %%
from minigpt.infer.evaluate import evaluate_split, write_samples

metrics = evaluate_split(model, P.paths["tokens"], "val", num_batches=20)
print({k: round(v, 4) if isinstance(v, float) else v for k, v in metrics.items()})

# %% [markdown]
# A fixed prompt set, written to `samples.md` together with the parameters used:

# %%
samples_md = write_samples(gen, config=gen_cfg, path=P.run_dir / "samples.md", chat=sft_model.is_dir() and not P.checkpoint)
print(samples_md)

# %% [markdown]
# ## Export to Hugging Face `transformers`
# The folder holds `config.json` (LlamaForCausalLM, or Qwen3ForCausalLM for a model with QK-norm), `model.safetensors` and the tokenizer files
# with the chat template; `AutoModelForCausalLM.from_pretrained` loads it as it is.

# %%
# NBVAL_CHECK_OUTPUT
from minigpt.infer.export import export_hf

hf_dir = export_hf(ckpt_dir, Path(P.export_dir) if P.export_dir else P.run_dir / "hf")
print(sorted(p.name for p in hf_dir.iterdir()))

# %% [markdown]
# ## Speed
# At batch 1 a decode step reads every weight once to make one token, so its speed is set by how
# fast the weights can be read, plus a fixed cost per operation. minigpt's native step
# (`minigpt/infer/kernels/decode_step.c`, compiled on first use) runs a whole step in one call; with
# `quantize="int8"` it reads int8 weights, a quarter of the bytes. The table times decoding of the same
# prompt each way (greedy, and sampled with temperature 0.8, top-k 50, top-p 0.9), and `transformers`
# `generate` on the folder just exported, in this process.

# %%
from minigpt.bench import format_table
from minigpt.bench.generate import bench_generate

speed = bench_generate(model, tokenizer, hf_dir=hf_dir, new_tokens=P.bench_new_tokens, batch_sizes=(1,), repeats=1)
print(format_table({"generate": {ckpt_dir.name: speed}}))

# %% [markdown]
# What int8 costs in quality: the validation loss with the weights rounded as the int8 step rounds them.

# %%
from minigpt.infer.native_decode import quantized_copy

int8_metrics = evaluate_split(quantized_copy(model, "int8"), P.paths["tokens"], "val", num_batches=20)
print(f"val loss fp32 {metrics['loss']:.4f}, int8 {int8_metrics['loss']:.4f} "
      f"(difference {int8_metrics['loss'] - metrics['loss']:+.4f})")

# %% [markdown]
# ## Try it yourself
# Move the sliders, type a prompt and press **Generate**; switch to chat mode for a conversation
# with history (**Clear** starts over). Under papermill the panel is only shown.

# %%
from minigpt.ui.widgets import GenerationPanel

if P.show_widgets:
    panel = GenerationPanel(gen, gen_cfg, prompt=P.prompt, prompts_file=P.prompts_file)
    display(panel)

# %% [markdown]
# ## Use it elsewhere
# **An OpenAI-compatible server.** In a terminal, `python -m minigpt.serve CKPT` serves the model on
# `http://127.0.0.1:8000/v1` (chat and text completions, streaming, `/v1/models`, `/health`). Requests that
# arrive while others are decoding join the running batch. Options: `--quantize int8`, `--max-batch 8`,
# `--max-queue 64` (past it: 429), `--api-key KEY`. The command for this checkpoint:

# %%
# NBVAL_IGNORE_OUTPUT
print(f"python -m minigpt.serve {ckpt_dir}")

# %% [markdown]
# Any OpenAI client can talk to it. This cell asks the server when one is running on port 8000;
# otherwise (under papermill, for example) it only prints what to start.

# %%
# NBVAL_IGNORE_OUTPUT
import httpx

server_url = "http://127.0.0.1:8000"
try:
    server_up = httpx.get(server_url + "/health", timeout=0.5).status_code == 200
except httpx.TransportError:
    server_up = False
if server_up:
    import openai

    client = openai.OpenAI(base_url=server_url + "/v1", api_key="unused")
    reply = client.chat.completions.create(model="minigpt", messages=[{"role": "user", "content": "你好"}], max_tokens=50)
    print(reply.choices[0].message.content)
else:
    print(f"no server at {server_url}; start one with: python -m minigpt.serve {ckpt_dir}")

# %% [markdown]
# **llama.cpp and Ollama.** `python -m minigpt.export CKPT OUT --format gguf --outtype f32|f16|q8_0` writes a GGUF
# file (llama.cpp's `llama` architecture, or `qwen3` for a model with QK-norm such as tiny; the tokenizer as
# byte-level BPE with the `gpt-2` pre-tokenizer, which
# splits text exactly as minigpt's tokenizer does) and an Ollama `Modelfile` with the ChatML template and the
# `<|im_end|>` stop. Here with 8-bit weights:

# %%
# NBVAL_IGNORE_OUTPUT
from minigpt.infer.gguf import export_gguf

gguf_file = export_gguf(ckpt_dir, P.run_dir / "gguf", outtype="q8_0")
assert sorted(p.name for p in gguf_file.parent.iterdir()) == ["Modelfile", "minigpt-q8_0.gguf"]
print(gguf_file, f"{gguf_file.stat().st_size / 1e6:.1f} MB")
print((gguf_file.parent / "Modelfile").read_text(encoding="utf-8"))

# %% [markdown]
# Then, outside Python:
#
# ```
# llama-cli -m runs/default/gguf/minigpt-q8_0.gguf -p "长江、" -n 50      # llama.cpp
# cd runs/default/gguf && ollama create minigpt -f Modelfile && ollama run minigpt
# ```
