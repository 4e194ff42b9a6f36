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
# # 03 · Pretrain
#
# The model reads random windows of the token file and learns to predict the next token.
# One `Trainer` does the work here and in notebook 04: the learning-rate schedule of the config (tiny: Muon with
# warmup-stable-decay; `lr_scheduler` and `optimizer_type` choose others), gradient
# accumulation, clipping, periodic evaluation (loss and bits per character), checkpoints you can
# resume from, and loss-curve PNGs. The same code runs headless under papermill, from the panel
# at the bottom, and under `torchrun`. With `init_from` it continues pretraining a downloaded Hugging Face
# model (imported once; the run's text is encoded with that model's tokenizer) or a minigpt checkpoint.

# %% tags=["parameters"]
# Parameters: plain literals only. None means "take it from params/<config>.yaml".
config = None          # tiny | small | medium | ci
run_dir = None
preset = None          # model shape: tiny | small | medium (shape parameters override it)
learning_rate = None
max_steps = None
batch_size = None
warmup_steps = None
eval_interval = None
save_interval = None  # steps between checkpoints
enable_compile = None
device = None          # auto | cpu | cuda | cuda:N | mps
dtype = None           # auto | float32 | float16 | bfloat16
auto_resume = None     # continue from the newest verified checkpoint
max_cpu = None         # resource guard: pause above this CPU % (0 means off)
max_memory = None      # resource guard: pause above this memory %
nproc_per_node = None  # more than 1: DDP with torchrun in a subprocess
# continue pretraining a downloaded Hugging Face model folder or a minigpt checkpoint (shape and tokenizer come from it)
init_from = None

# %%
# NBVAL_IGNORE_OUTPUT
from minigpt.params import load_params
from minigpt.report import system_report

P = load_params("pretrain", globals())
print(system_report(preset=P.preset, device=P.device, dtype=P.dtype, batch_size=P.batch_size))

# %% [markdown]
# ## Build the model and the trainer
# Everything is checked before any compute: missing token files name the notebook to run first,
# and bad values name the parameter.

# %%
# NBVAL_CHECK_OUTPUT
from minigpt.train.pretrain import build_pretrain_trainer
from minigpt.ui.plots import LivePlot

live = LivePlot(every=P.live_plot_interval, title="pretrain loss")
trainer = build_pretrain_trainer(P, callbacks=[live])
cfg = trainer.model_cfg
print(f"model: d_model={cfg.d_model} n_layers={cfg.n_layers} n_heads={cfg.n_heads} n_kv_heads={cfg.n_kv_heads} "
      f"d_ff={cfg.d_ff} vocab={cfg.vocab_size} max_seq_len={cfg.max_seq_len}")
print(f"parameters: {trainer.model.num_params():,}")
print(f"steps: {trainer.max_steps}, batch {P.batch_size} x {trainer.seq_len} tokens x {trainer.accumulation_steps} accumulation")

# %% [markdown]
# ## One step by hand
# Before the `Trainer` takes over, here is one training step in view: two token windows of a batch, the
# forward pass through the model's modules (shapes printed), the cross-entropy loss, one backward pass
# and one AdamW update. This is all `GPT.forward` (`minigpt/model/gpt.py`) does. It runs on a copy of the
# model, so the training below starts from the same weights. With `dropout` > 0 each pass draws random masks:
# the cell seeds the random generator before each pass so that they are the same masks, inside `fork_rng`
# so that the training below draws as if this cell had not run.

# %%
# NBVAL_IGNORE_OUTPUT
import copy
import math

import torch
import torch.nn.functional as F

model = copy.deepcopy(trainer.model)                        # a copy: the run below starts from the same weights
# two windows of the first batch: by hand every layer's activations are kept (medium's whole batch would hold ~9 GB)
x, y = (t[:2].to(trainer.device) for t in trainer.train_batches.batch_at(0))  # y is x shifted left by one token
print(f"batch: x {tuple(x.shape)} token ids; row 0 starts {x[0, :6].tolist()} and must predict {y[0, :6].tolist()}")

with torch.random.fork_rng(devices=[x.device] if x.device.type == "cuda" else []):
    torch.manual_seed(P.seed)                               # dropout's masks (when dropout > 0) come from here
    h = model.drop(model.embed_tokens(x))                   # (B, T, d_model): one vector per token
    cos, sin = model.rope(None, 0, x.shape[1])              # rotary angles of positions 0..T-1
    print(f"embeddings        {tuple(h.shape)}")
    for i, block in enumerate(model.layers):
        h = block(h, cos, sin)                              # h + attention(norm(h)), then h + MLP(norm(h))
        print(f"after block {i}     {tuple(h.shape)}")
    logits = model.lm_head(model.norm(h))                   # (B, T, vocab): a score for every possible next token
    loss = F.cross_entropy(logits.float().flatten(0, 1), y.flatten())
    V = logits.shape[-1]
    print(f"logits            {tuple(logits.shape)}")
    print(f"loss {loss.item():.3f} (a uniform guess over {V} tokens would score ln {V} = {math.log(V):.3f})")
    assert logits.shape == (*x.shape, model.config.vocab_size)
    torch.manual_seed(P.seed)                               # the same masks again
    assert torch.allclose(loss, model(x, y)[1])             # the same computation as GPT.forward

    loss.backward()                                         # d loss / d weight, for every weight
    grad_norm = torch.cat([p.grad.flatten() for p in model.parameters() if p.grad is not None]).norm().item()
    torch.optim.AdamW(model.parameters(), lr=P.learning_rate).step()
    with torch.no_grad():
        torch.manual_seed(P.seed)                           # the same masks, so the scores compare the weights only
        after = model(x, y)[1].item()
print(f"gradient norm {grad_norm:.3f}; after one AdamW step the same batch scores {after:.3f}")
del model, h, logits, loss

# %% [markdown]
# ## Train
# The plot below updates in place while training runs; a metrics line is printed every
# `log_interval` steps and every line goes to `metrics.jsonl`. Interrupt the kernel at any time:
# the trainer saves a checkpoint at the current step and returns.
#
# With `nproc_per_node` > 1 the same parameters go to `launch()`, which runs `torchrun` on
# `minigpt.train.worker` in a subprocess (gloo on CPU, nccl on CUDA) and streams its log here;
# interrupting the cell stops every worker, after they save.

# %%
# NBVAL_IGNORE_OUTPUT
import logging

from minigpt.train.launch import launch

logging.basicConfig(level=logging.INFO, format="%(message)s", force=True)
if P.nproc_per_node > 1:
    result = launch(P.nproc_per_node, params=P, nnodes=P.nnodes, node_rank=P.node_rank,
                    master_addr=P.master_addr, master_port=P.master_port)["result"]
else:
    result = trainer.fit()
print(result)

# %% [markdown]
# ## Did it learn?
# Validation loss at the first and the last evaluation, and a greedy sample from the final model.

# %%
import math

from minigpt.ui.plots import read_metrics

evals = [r for r in read_metrics(trainer.metrics_path) if "val_loss" in r]
first, last = evals[0], evals[-1]
print(f"val loss: {first['val_loss']:.3f} at step {first['step']} -> {last['val_loss']:.3f} at step {last['step']}")
if "val_bpc" in last:
    print(f"bits per character: {last['val_bpc']:.3f}")
assert math.isfinite(last["val_loss"])

# %%
from minigpt.train.checkpoint import load_checkpoint
from minigpt.infer.generate import GenerationConfig, TextGenerator

model, tokenizer, _ = load_checkpoint(trainer.output_dir / "final_model")  # also what a DDP run saved
gen = TextGenerator(model, tokenizer)
for prompt in ("你好，", "中国", "经济"):
    print(repr(prompt), "->", gen.generate(prompt, GenerationConfig(max_new_tokens=40, do_sample=False, repetition_penalty=1.3)))

# %% [markdown]
# The loss curve saved with the final checkpoint (`plots/loss_curve_final_step_N.png`), two
# panels: the whole run and the last 1000 steps. `python -m minigpt.plots RUN_DIR` redraws it.

# %%
from IPython.display import Image

Image(filename=str(trainer.output_dir / "plots" / "loss_curve_latest.png"))

# %% [markdown]
# ## Train from the panel
# The controls set the same parameters as the parameters cell. **Start** runs the same trainer in
# the background with the live plot inside the panel; **Stop** saves a checkpoint and returns.
# Under papermill the panel is only shown; nothing waits for a click.

# %%
from minigpt.ui.train_panel import TrainingPanel

if P.show_widgets:
    panel = TrainingPanel(P, lambda p: build_pretrain_trainer(p, callbacks=[LivePlot(every=5, target=panel.output)]))
    display(panel.widget)
