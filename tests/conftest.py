"""Shared test helpers: tiny tokenizers and models, and one torch thread for modules that opt in."""
from __future__ import annotations

import random

import pytest
import torch

MIXED_LINES = [
    "长江、黄河是中国的两条大河。", "今天天气很好，我们去公园散步。", "你好，很高兴认识你。", "中国的首都是北京。",
    "人工智能正在改变世界。", "Hello, how are you today?", "我喜欢读书和写字。",
]


@pytest.fixture(scope="module")
def one_thread():
    """Tiny models run as fast on one thread; on a shared, busy CPU two threads can be many times slower."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def mixed_corpus(lines=MIXED_LINES, n: int = 100, k: int = 3, seed: int = 0) -> list[str]:
    """n documents, each k of `lines` in a random order: enough repetition for a BPE to learn merges."""
    rng = random.Random(seed)
    return ["".join(rng.sample(lines, k)) for _ in range(n)]


def tiny_tokenizer(lines=MIXED_LINES, n: int = 100, vocab_size: int = 300):
    from minigpt.data.tokenizer import TokenizerConfig, train_tokenizer

    return train_tokenizer(mixed_corpus(lines, n), TokenizerConfig(tokenizer_vocab_size=vocab_size, min_frequency=2))


def tiny_gpt(vocab_size: int, seed: int = 0, **shape):
    from minigpt import GPT, ModelConfig

    torch.manual_seed(seed)
    cfg = dict(vocab_size=vocab_size, d_model=32, n_layers=2, n_heads=4, n_kv_heads=2, max_seq_len=32)
    cfg.update(shape)
    return GPT(ModelConfig(**cfg)).eval()


def train_briefly(model, batches, lr: float = 3e-3):
    """AdamW steps over `batches` ((B, T+1) token tensors, inputs and shifted targets); returns the model in eval mode."""
    opt = torch.optim.AdamW(model.parameters(), lr=lr)
    model.train()
    for xy in batches:
        _, loss = model(xy[:, :-1], xy[:, 1:])
        opt.zero_grad()
        loss.backward()
        opt.step()
    return model.eval()


RUN_LINES = ["长江、黄河是中国的两条大河。", "今天天气很好，我们去公园散步。", "你好，很高兴认识你。",
             "经济发展需要改革开放。", "Hello, how are you today?", "新华社记者报道了这条消息。"]


def make_tiny_run(run):
    """A run directory holding what notebooks 01 and 02 would write: data, a tokenizer and token files."""
    import json

    from minigpt.data.packing import pack_corpus
    from minigpt.data.tokenizer import TokenizerConfig, build_tokenizer

    data = run / "data"
    data.mkdir(parents=True)
    for split, n in (("train", 300), ("val", 30)):
        with open(data / f"{split}.jsonl", "w", encoding="utf-8") as f:
            for i in range(n):
                text = RUN_LINES[i % len(RUN_LINES)] + RUN_LINES[(i * 7 + 3) % len(RUN_LINES)]
                f.write(json.dumps({"text": text}, ensure_ascii=False) + "\n")
    tok = build_tokenizer(data, run / "tokenizer", TokenizerConfig(tokenizer_vocab_size=300, min_frequency=2))
    pack_corpus(data, tok, run / "tokens")
    return run
