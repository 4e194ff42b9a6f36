"""LoRA: frozen base, adapters only train, merge equals the unmerged model, merged state loads into a plain GPT."""
import pytest
import torch

from minigpt import GPT, ModelConfig
from minigpt.model.lora import (LoRALinear, adapter_state, count_trainable, inject_lora, load_adapter_state, merge_lora,
                          merged_state)


def tiny_model(seed=0):
    torch.manual_seed(seed)
    return GPT(ModelConfig(vocab_size=97, d_model=32, n_layers=2, n_heads=4, n_kv_heads=2, d_ff=64, max_seq_len=64))


def randomize_adapters(model, seed=1):
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, LoRALinear):
                m.lora_B.copy_(torch.randn(m.lora_B.shape, generator=g) * 0.1)


def test_inject_starts_identical_and_freezes_base():
    base = tiny_model()
    x = torch.randint(0, 97, (2, 12))
    before = base(x)[0].detach()
    model = inject_lora(tiny_model(), rank=4, alpha=8, targets=["q_proj", "v_proj", "down_proj"])
    assert torch.allclose(model(x)[0], before, atol=1e-6)  # B = 0: no change at start
    names = {n for n, p in model.named_parameters() if p.requires_grad}
    assert names and all(n.endswith(("lora_A", "lora_B")) for n in names)
    assert {n.split(".")[-2] for n in names} == {"q_proj", "v_proj", "down_proj"}
    trainable, total = count_trainable(model)
    assert trainable == sum(p.numel() for n, p in model.named_parameters() if p.requires_grad) < total // 5
    # base keys are unchanged: the weight is shared, not copied
    assert "layers.0.self_attn.q_proj.weight" in model.state_dict()


def test_training_changes_only_adapters():
    model = inject_lora(tiny_model(), rank=4, alpha=8, targets=["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"])
    frozen = {n: p.detach().clone() for n, p in model.named_parameters() if not p.requires_grad}
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-2)
    x = torch.randint(0, 97, (4, 16))
    first = None
    for _ in range(5):
        _, loss = model(x, x)
        first = first if first is not None else float(loss.detach())
        loss.backward()
        opt.step()
        opt.zero_grad()
    assert float(loss.detach()) < first
    for n, p in model.named_parameters():
        if n in frozen:
            assert torch.equal(p, frozen[n]), n
    assert all(p.grad is None for p in model.parameters() if not p.requires_grad)


def test_merge_equals_unmerged_and_loads_as_plain_gpt():
    model = inject_lora(tiny_model(), rank=4, alpha=16, targets=["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"])
    randomize_adapters(model)
    model.eval()
    x = torch.randint(0, 97, (2, 20))
    unmerged = model(x)[0].detach()
    assert not torch.allclose(unmerged, tiny_model()(x)[0], atol=1e-4)  # the adapters do something
    # merged_state (what final_model saves) into a plain GPT
    plain = tiny_model(seed=5)
    plain.load_state_dict(merged_state(model))
    plain.eval()
    torch.testing.assert_close(plain(x)[0], unmerged, atol=1e-5, rtol=0)
    # merge_lora in place: plain nn.Linear back, same logits
    merge_lora(model)
    assert not any(isinstance(m, LoRALinear) for m in model.modules())
    assert set(model.state_dict()) == set(tiny_model().state_dict())
    torch.testing.assert_close(model(x)[0], unmerged, atol=1e-5, rtol=0)


def test_adapter_state_roundtrip_and_mismatch():
    a = inject_lora(tiny_model(), rank=4, alpha=8, targets=["q_proj", "v_proj"])
    randomize_adapters(a, seed=3)
    state = adapter_state(a)
    assert state and all(k.endswith(("lora_A", "lora_B")) for k in state)
    b = inject_lora(tiny_model(), rank=4, alpha=8, targets=["q_proj", "v_proj"])
    load_adapter_state(b, state, "test")
    x = torch.randint(0, 97, (1, 8))
    a.eval(), b.eval()
    torch.testing.assert_close(a(x)[0], b(x)[0], atol=0, rtol=0)
    c = inject_lora(tiny_model(), rank=2, alpha=8, targets=["q_proj", "v_proj"])
    with pytest.raises(ValueError, match="shape"):
        load_adapter_state(c, state, "test")
    d = inject_lora(tiny_model(), rank=4, alpha=8, targets=["q_proj"])
    with pytest.raises(ValueError, match="unexpected"):
        load_adapter_state(d, state, "test")


def test_bad_target_named():
    with pytest.raises(ValueError, match="lora_targets: 'qkv'"):
        inject_lora(tiny_model(), targets=["qkv"])
