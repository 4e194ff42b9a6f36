"""Training batches: deterministic windows, and chat examples with assistant-only labels."""
import numpy as np
import pytest
import torch

from minigpt.data.chat_data import ChatBatches, build_chat_example
from minigpt.data.datasets import IGNORE_INDEX, WindowSampler, sequential_windows
from minigpt.data.tokenizer import TokenizerConfig, train_tokenizer

TEXTS = ["你好，很高兴认识你。", "今天天气很好，我们去公园散步吧。", "Hello there, how are you today?",
         "我叫小明，我喜欢读书和跑步。", "人工智能正在改变世界。"] * 20


@pytest.fixture(scope="module")
def tok():
    return train_tokenizer(TEXTS, TokenizerConfig(tokenizer_vocab_size=400, min_frequency=1))


def test_windows_are_shifted_and_deterministic():
    data = np.arange(1000, dtype=np.uint16)
    s = WindowSampler(data, batch_size=3, seq_len=8, seed=5)
    x, y = next(s)
    assert x.shape == (3, 8) and torch.equal(x[:, 1:], y[:, :-1]) and torch.equal(y - x, torch.ones_like(x))
    again = WindowSampler(data, batch_size=3, seq_len=8, seed=5)
    assert torch.equal(again.batch_at(0)[0], x)
    # resume: position restored -> the same next batch
    s2 = WindowSampler(data, batch_size=3, seq_len=8, seed=0)
    s2.load_state_dict(s.state_dict())
    assert torch.equal(next(s2)[0], next(s)[0])
    # ranks read different windows
    other = WindowSampler(data, batch_size=3, seq_len=8, seed=5, rank=1, world_size=2)
    assert not torch.equal(other.batch_at(0)[0], x)


def test_sequential_windows_fixed():
    data = np.arange(500, dtype=np.uint16)
    a = sequential_windows(data, 2, 10, 3)
    assert len(a) == 3 and a[0][0][0, 0].item() == 0
    assert torch.equal(a[0][0], sequential_windows(data, 2, 10, 3)[0][0])


def test_chat_labels_only_on_assistant_replies(tok):
    messages = [{"role": "system", "content": "你是助手。"},
                {"role": "user", "content": "你好"},
                {"role": "assistant", "content": "你好，很高兴认识你。"},
                {"role": "user", "content": "你叫什么？"},
                {"role": "assistant", "content": "我叫小明。"}]
    ex = build_chat_example(tok, messages, max_len=512)
    full = tok.apply_chat_template(messages)
    assert ex.input_ids == full[:-1]
    targets = [(i, l) for i, l in enumerate(ex.labels) if l != IGNORE_INDEX]
    # the labelled tokens, read back, are exactly the two replies each followed by <|im_end|>
    text = tok.decode([l for _, l in targets])
    assert text == "你好，很高兴认识你。<|im_end|>我叫小明。<|im_end|>"
    for i, l in targets:
        assert full[i + 1] == l  # labels are next-token targets
    assert ex.labels.count(tok.im_end_id) == 2


def test_long_conversation_cut_at_turn_boundary_or_dropped(tok):
    turn = [{"role": "user", "content": "你好"}, {"role": "assistant", "content": "今天天气很好，我们去公园散步吧。"}]
    conv = turn * 6
    first_turn_len = len(tok.apply_chat_template(turn))
    ex = build_chat_example(tok, conv, max_len=first_turn_len * 2)
    assert ex is not None and ex.truncated
    # it ends right after an assistant reply's <|im_end|>: the last label is im_end
    last = [l for l in ex.labels if l != IGNORE_INDEX][-1]
    assert last == tok.im_end_id
    assert build_chat_example(tok, conv, max_len=first_turn_len // 2) is None  # not even one reply fits


def test_chat_batches_pad_with_ignore(tok):
    convs = [[{"role": "user", "content": t}, {"role": "assistant", "content": t[::-1]}] for t in TEXTS[:5]]
    exs = [build_chat_example(tok, c, 256) for c in convs]
    b = ChatBatches(exs, batch_size=4, pad_id=tok.pad_id, seed=0)
    x, y = next(b)
    assert x.shape == y.shape and x.shape[0] == 4
    width = x.shape[1]
    assert any(len(e.input_ids) < width for e in exs)
    assert (y[x == tok.pad_id] == IGNORE_INDEX).all()
