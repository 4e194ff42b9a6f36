"""SFT: assistant-only loss, HF template parity, truncation, packing isolation, LoRA checkpoints end to end."""
import json
import os

import pytest
import torch
import torch.nn.functional as F

from minigpt import GPT, ModelConfig
from minigpt.data.chat_data import ChatBatches, build_chat_example, pack_examples, pad_examples
from minigpt.data.datasets import IGNORE_INDEX
from minigpt.data.tokenizer import TokenizerConfig, train_tokenizer

TEXTS = ["你好，很高兴认识你。", "今天天气很好，我们去公园散步吧。", "Hello there, how are you today?",
         "我叫小明，我喜欢读书和跑步。", "人工智能正在改变世界。", "你是助手。你叫什么？我叫小明。"] * 20

CONV = [{"role": "system", "content": "你是助手。"},
        {"role": "user", "content": "你好"},
        {"role": "assistant", "content": "你好，很高兴认识你。"},
        {"role": "user", "content": "你叫什么？"},
        {"role": "assistant", "content": "我叫小明。"}]


@pytest.fixture(scope="module")
def tok():
    return train_tokenizer(TEXTS, TokenizerConfig(tokenizer_vocab_size=400, min_frequency=1))


@pytest.fixture(scope="module")
def model(tok):
    torch.manual_seed(0)
    m = GPT(ModelConfig(vocab_size=tok.vocab_size, d_model=32, n_layers=2, n_heads=4, n_kv_heads=2, d_ff=64, max_seq_len=128))
    return m.eval()


def convs():
    out = []
    for i, t in enumerate(TEXTS[:6]):
        c = [{"role": "user", "content": t}, {"role": "assistant", "content": TEXTS[(i + 1) % 6]}]
        if i % 2:
            c = [{"role": "system", "content": "你是助手。"}] + c + [{"role": "user", "content": "好"}, {"role": "assistant", "content": t}]
        out.append(c)
    return out


def test_token_level_mask_multi_turn_with_system(tok):
    ex = build_chat_example(tok, CONV, max_len=512)
    ids = tok.apply_chat_template(CONV)
    # expected mask built independently, token by token, from the rendered pieces
    expected = []
    for m in CONV:
        head = [tok.im_start_id] + tok.encode(f"{m['role']}\n")
        body = tok.encode(m["content"]) + [tok.im_end_id]
        assert tok.encode(f"{m['role']}\n{m['content']}") == tok.encode(f"{m['role']}\n") + tok.encode(m["content"])
        expected += [False] * len(head) + [m["role"] == "assistant"] * len(body) + [False] * len(tok.encode("\n"))
    assert len(expected) == len(ids)
    assert ex.input_ids == ids[:-1]
    assert ex.labels == [t if e else IGNORE_INDEX for t, e in zip(ids[1:], expected[1:])]
    # the system prompt and user turns carry no label at all
    sys_user = tok.encode("你是助手。") + tok.encode("你好") + tok.encode("你叫什么？")
    labelled = [l for l in ex.labels if l != IGNORE_INDEX]
    assert tok.decode(labelled) == "你好，很高兴认识你。<|im_end|>我叫小明。<|im_end|>"
    assert len(labelled) < len(ex.labels) - len(sys_user)


def test_example_ids_equal_hf_apply_chat_template(tok, tmp_path):
    transformers = pytest.importorskip("transformers")
    tok.save(tmp_path / "tok")
    hf = transformers.AutoTokenizer.from_pretrained(str(tmp_path / "tok"))
    for conv in [CONV] + convs():
        ex = build_chat_example(tok, conv, max_len=512)
        out = hf.apply_chat_template(conv, tokenize=True)
        hf_ids = list(out["input_ids"] if hasattr(out, "keys") else out)
        # the example's inputs plus its last target are the whole rendered conversation
        assert ex.input_ids + [tok.apply_chat_template(conv)[-1]] == hf_ids


def test_loss_counts_only_assistant_tokens(tok, model):
    ex = build_chat_example(tok, CONV, max_len=512)
    x, y = pad_examples([ex], tok.pad_id)
    logits, loss = model(x, y)
    # changing what a non-assistant position "would" predict never changes the loss: the gradient of the loss
    # with respect to the logits is exactly zero there, and non-zero at every assistant target
    lg = logits.detach().requires_grad_(True)
    F.cross_entropy(lg.view(-1, lg.size(-1)), y.view(-1), ignore_index=IGNORE_INDEX).backward()
    g = lg.grad[0].abs().sum(-1)
    assert (g[y[0] == IGNORE_INDEX] == 0).all() and (g[y[0] != IGNORE_INDEX] > 0).all()
    # a different user/system text with the same replies: the assistant-target loss is over the same labels
    other = [dict(m) for m in CONV]
    other[0]["content"], other[3]["content"] = "人工智能正在改变世界。", "今天天气很好？"
    ex2 = build_chat_example(tok, other, max_len=512)
    assert [l for l in ex2.labels if l != IGNORE_INDEX] == [l for l in ex.labels if l != IGNORE_INDEX]
    # perturbing logits at user positions leaves the loss as it was
    noisy = logits.detach().clone()
    noisy[0, y[0] == IGNORE_INDEX] += torch.randn_like(noisy[0, y[0] == IGNORE_INDEX]) * 10
    l1 = F.cross_entropy(logits.view(-1, logits.size(-1)), y.view(-1), ignore_index=IGNORE_INDEX)
    l2 = F.cross_entropy(noisy.view(-1, noisy.size(-1)), y.view(-1), ignore_index=IGNORE_INDEX)
    assert torch.allclose(l1, l2) and torch.allclose(l1, loss)


def test_truncation_at_turn_boundary(tok):
    conv = CONV + [{"role": "user", "content": "今天天气很好，我们去公园散步吧。" * 3},
                   {"role": "assistant", "content": "人工智能正在改变世界。" * 3}]
    full = tok.apply_chat_template(conv)
    two_turns = tok.apply_chat_template(CONV)
    ex = build_chat_example(tok, conv, max_len=len(two_turns) + 5)
    assert ex.truncated
    # cut right after the second reply's <|im_end|>: inputs are a prefix, labels end with it
    cut = len(ex.input_ids) + 1
    assert full[:cut] == two_turns[:-1] and full[cut - 1] == tok.im_end_id
    assert [l for l in ex.labels if l != IGNORE_INDEX][-1] == tok.im_end_id
    assert build_chat_example(tok, conv, max_len=10) is None  # not even the first reply fits: dropped
    untouched = build_chat_example(tok, conv, max_len=len(full))
    assert not untouched.truncated and untouched.input_ids == full[:-1]


def test_build_examples_counts(tok):
    from minigpt.train.sft import build_examples

    long = CONV + [{"role": "user", "content": "你好" * 40}, {"role": "assistant", "content": "你好" * 40}]
    exs, counts = build_examples(tok, [CONV, long, [{"role": "user", "content": "你好" * 200}, {"role": "assistant", "content": "好"}],
                                       [{"role": "user", "content": "你好"}]], max_len=len(tok.apply_chat_template(CONV)) + 2)
    assert counts == {"conversations": 4, "kept": 2, "truncated": 1, "dropped_too_long": 1, "dropped_no_reply": 1}
    assert all(any(l != IGNORE_INDEX for l in e.labels) for e in exs)  # never a label-less example


def test_packing_isolation_same_logits(tok, model):
    exs = [build_chat_example(tok, c, 128) for c in convs()]
    rows = [exs[:3], exs[3:]]
    x, y, extras = pack_examples(rows, tok.pad_id)
    assert extras["attn_mask"].shape == (2, 1, x.shape[1], x.shape[1]) and extras["attn_mask"].dtype == torch.bool
    with torch.no_grad():
        packed = model(x, **extras)[0]
        at = 0
        for e in rows[0]:
            n = len(e.input_ids)
            alone = model(torch.tensor([e.input_ids]))[0][0]
            torch.testing.assert_close(packed[0, at:at + n], alone, atol=1e-5, rtol=0)
            assert extras["positions"][0, at].item() == 0
            at += n
        # the loss over the packed batch equals the token-weighted loss of the examples alone
        _, loss = model(x, y, **extras)
        xs, ys = pad_examples(exs, tok.pad_id)
        _, loss_alone = model(xs, ys)
    torch.testing.assert_close(loss, loss_alone, atol=1e-5, rtol=0)
    assert torch.equal(torch.cat([y[0][y[0] != IGNORE_INDEX], y[1][y[1] != IGNORE_INDEX]]),
                       torch.cat([torch.tensor([l for l in e.labels if l != IGNORE_INDEX]) for e in exs]))


def test_packed_batches_deterministic_and_fill_rows(tok):
    exs = [build_chat_example(tok, c, 128) for c in convs()] * 4
    b = ChatBatches(exs, batch_size=2, pad_id=tok.pad_id, seed=3, pack=True, seq_len=128)
    x, y, extras = next(b)
    assert x.shape[1] <= 128 and (extras["attn_mask"].sum(-1) > 0).all()  # every query attends to something
    lens = sorted(len(e.input_ids) for e in exs)
    assert int((x != tok.pad_id).sum()) > 2 * lens[-1]  # more than one conversation per row
    again = ChatBatches(exs, batch_size=2, pad_id=tok.pad_id, seed=0, pack=True, seq_len=128)
    again.load_state_dict(b.state_dict())
    assert torch.equal(next(again)[0], next(b)[0])


# ---------------------------------------------------------------------------------------------- end to end

def _make_run(tmp_path, tok):
    from minigpt.train.checkpoint import save_checkpoint

    tok.save(tmp_path / "tok")
    torch.manual_seed(0)
    cfg = ModelConfig(vocab_size=tok.vocab_size, d_model=32, n_layers=2, n_heads=4, n_kv_heads=2, d_ff=64, max_seq_len=128)
    base = save_checkpoint(tmp_path / "run" / "pretrain" / "final_model", GPT(cfg),
                           {"model": cfg.to_dict(), "tokenizer_sha256": tok.sha256}, tmp_path / "tok")
    data = tmp_path / "run" / "data"
    data.mkdir(parents=True)
    with open(data / "sft.jsonl", "w", encoding="utf-8") as f:
        for c in convs() * 3:
            f.write(json.dumps({"conversations": c}, ensure_ascii=False) + "\n")
    return tmp_path / "run", base


def _params(run, **kw):
    from minigpt.params import load_params

    base = dict(config="ci", run_dir=str(run), max_steps=4, batch_size=2, save_steps=2, eval_interval=2, warmup_steps=1,
                log_interval=1, plot_loss=False, learning_rate=1e-2)
    base.update(kw)
    return load_params("sft", **base)


def test_lora_run_saves_adapter_merged_final_and_resumes(tok, tmp_path):
    from minigpt.train.checkpoint import load_checkpoint
    from minigpt.train.sft import build_sft_trainer

    run, base = _make_run(tmp_path, tok)
    tr, info = build_sft_trainer(_params(run, use_lora=True, lora_rank=2, lora_targets=["q_proj", "v_proj"], pack_conversations=True))
    assert info["lora"]["trainable_params"] < info["lora"]["total_params"] // 10
    frozen = {n: p.detach().clone() for n, p in tr.model.named_parameters() if not p.requires_grad}
    result = tr.fit()
    assert result["step"] == 4
    for n, p in tr.model.named_parameters():
        if n in frozen:
            assert torch.equal(p, frozen[n]), n  # base weights frozen
    step = run / "sft" / "checkpoint_step_2"
    assert (step / "adapter.safetensors").is_file() and not (step / "model.safetensors").exists()
    final = run / "sft" / "final_model"
    assert (final / "adapter.safetensors").is_file()
    merged, _, _ = load_checkpoint(final)  # a plain GPT, as notebook 05 and export load it
    x = torch.tensor([tok.apply_chat_template(CONV)])
    tr.model.eval()
    with torch.no_grad():
        torch.testing.assert_close(merged(x)[0], tr.model(x)[0], atol=1e-5, rtol=0)
    # resume from the adapter-only step checkpoint: same adapters as the uninterrupted run at step 4
    tr2, _ = build_sft_trainer(_params(run, use_lora=True, lora_rank=2, lora_targets=["q_proj", "v_proj"], pack_conversations=True,
                                       resume_from=str(step), output_dir=str(tmp_path / "resumed")))
    tr2.fit()
    from minigpt.model.lora import adapter_state

    a, b = adapter_state(tr.model), adapter_state(tr2.model)
    for k in a:
        torch.testing.assert_close(a[k], b[k], atol=1e-6, rtol=0)


def test_full_sft_run_and_lora_ema_refused(tok, tmp_path):
    from minigpt.params import ParameterError
    from minigpt.train.sft import build_sft_trainer

    run, _ = _make_run(tmp_path, tok)
    tr, info = build_sft_trainer(_params(run, max_steps=2))
    assert info["kept"] == 18 and "lora" not in info
    tr.fit()
    assert (run / "sft" / "final_model" / "model.safetensors").is_file()
    with pytest.raises(ParameterError, match="use_ema"):
        build_sft_trainer(_params(run, use_lora=True, use_ema=True))
    with pytest.raises(ParameterError, match="lora_targets"):
        build_sft_trainer(_params(run, use_lora=True, lora_targets=["qkv"]))
