"""The BatchSource protocol the Trainer reads from: both batch classes meet it, anything else is named."""
import numpy as np
import pytest
import torch

from minigpt import GPT, ModelConfig, TrainConfig
from minigpt.data.chat_data import ChatBatches, ChatExample
from minigpt.data.datasets import PrefetchBatches, WindowSampler
from minigpt.train.batches import BatchSource, GrowingBatchSource, check_batch_source
from minigpt.train.trainer import Trainer


def test_window_sampler_chat_batches_and_prefetch_are_batch_sources():
    windows = WindowSampler(np.arange(200, dtype=np.uint16) % 50, 2, 8)
    ex = ChatExample(input_ids=[1, 2, 3, 4], labels=[-100, 2, 3, 4])
    chats = ChatBatches([ex, ex], 2, pad_id=0)
    for source in (windows, chats, PrefetchBatches(windows, 1)):
        assert isinstance(source, BatchSource)
        check_batch_source(source)
    assert isinstance(windows, GrowingBatchSource) and not isinstance(chats, GrowingBatchSource)


def test_a_source_without_the_protocol_is_refused_by_name(tmp_path):
    class OnlyNext:
        def __next__(self):
            return torch.zeros(1, 4, dtype=torch.long), torch.zeros(1, 4, dtype=torch.long)

    model = GPT(ModelConfig(vocab_size=64, d_model=32, n_layers=1, n_heads=2, n_kv_heads=1, max_seq_len=16))
    with pytest.raises(TypeError, match=r"OnlyNext is not a BatchSource \(missing seq_len, position, batch_at, state_dict"):
        Trainer(model, TrainConfig.from_flat(max_steps=2, warmup_steps=1, plot_loss=False), OnlyNext(), output_dir=tmp_path)
