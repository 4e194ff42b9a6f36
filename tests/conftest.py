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
    from minigpt.tokenizer import TokenizerConfig, train_tokenizer

    return train_tokenizer(mixed_corpus(lines, n), TokenizerConfig(tokenizer_vocab_size=vocab_size, min_frequency=2))


def tiny_gpt(vocab_size: int, seed: int = 0, **shape):
    from minigpt import GPT, ModelConfig

    torch.manual_seed(seed)
    cfg = dict(vocab_size=vocab_size, d_model=32, n_layers=2, n_heads=4, n_kv_heads=2, max_seq_len=32)
    cfg.update(shape)
    return GPT(ModelConfig(**cfg)).eval()
