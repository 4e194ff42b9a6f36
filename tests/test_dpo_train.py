"""DPO training: the reference log-prob cache equals a live reference (and is validated), a DPO run moves the
held-out reward accuracy, exact resume is bitwise, LoRA trains adapters only."""
import json

import pytest
import torch

from conftest import tiny_tokenizer
from minigpt import GPT, ModelConfig
from minigpt.align.data import encode_pairs
from minigpt.align.pairs import parse_pair
from minigpt.align.reference import CacheError, cached_reference_logps, read_cache, write_cache

REPLIES = ["你好，很高兴认识你。", "中国的首都是北京。", "我喜欢读书和写字。", "今天天气很好。", "人工智能正在改变世界。"]


def _pairs(n=24):
    out = []
    for i in range(n):
        prompt = [{"role": "user", "content": REPLIES[i % 5][:3 + i % 4]}]
        chosen, rejected = REPLIES[i % 5], REPLIES[(i + 2) % 5][::-1]
        out.append({"chosen": prompt + [{"role": "assistant", "content": chosen}],
                    "rejected": prompt + [{"role": "assistant", "content": rejected}]})
    return out


@pytest.fixture(scope="module")
def tok():
    return tiny_tokenizer()


def _model(tok, seed=0):
    torch.manual_seed(seed)
    return GPT(ModelConfig(vocab_size=tok.vocab_size, d_model=32, n_layers=2, n_heads=4, n_kv_heads=2, d_ff=64,
                           max_seq_len=96)).eval()


def _make_run(tmp_path, tok):
    from minigpt.train.checkpoint import save_checkpoint

    tok.save(tmp_path / "tok")
    model = _model(tok)
    save_checkpoint(tmp_path / "run" / "sft" / "final_model", model,
                    {"model": model.config.to_dict(), "tokenizer_sha256": tok.sha256}, tmp_path / "tok")
    path = tmp_path / "run" / "dpo.jsonl"
    path.write_text("".join(json.dumps(p, ensure_ascii=False) + "\n" for p in _pairs()) + "not json\n", encoding="utf-8")
    return tmp_path / "run", path


def _params(run, pairs, **kw):
    from minigpt.params import load_params

    base = dict(config="ci", run_dir=str(run), pairs_source=str(pairs), max_steps=4, batch_size=2, save_steps=2,
                eval_interval=2, warmup_steps=1, log_interval=1, plot_loss=False, learning_rate=5e-3, min_lr=5e-4,
                eval_pairs=4, kl_pairs=2, dtype="float32", device="cpu")
    base.update(kw)
    return load_params("align", **base)


def _live_logp(model, tok, pair, side):
    """log ref(reply | prompt) from one plain forward pass, summed over the reply and its <|im_end|>."""
    prompt = tok.apply_chat_template(pair.prompt_messages(), add_generation_prompt=True)
    full = tok.apply_chat_template(pair.messages(side))
    reply_end = len(tok.apply_chat_template(pair.prompt_messages(), add_generation_prompt=True)
                    + tok.encode(getattr(pair, side))) + 1
    with torch.no_grad():
        logp = torch.log_softmax(model(torch.tensor([full[:-1]]))[0][0].float(), -1)
    return float(sum(logp[t - 1, full[t]] for t in range(len(prompt), reply_end)))


def test_cache_equals_live_reference_and_is_validated(tok, tmp_path, caplog):
    pairs = [parse_pair(p) for p in _pairs(6)]
    enc, kept, _ = encode_pairs(tok, pairs, 96)
    ref = _model(tok, seed=1)
    path = tmp_path / "reference_logps.safetensors"
    logps, info = cached_reference_logps(path, enc, "a" * 64, lambda: ref, tok.pad_id, batch_size=4)
    assert info == {"pairs": 6, "from_cache": 0, "computed": 6}
    for (c, r), p in zip(logps.tolist(), kept):
        assert c == pytest.approx(_live_logp(ref, tok, p, "chosen"), abs=1e-4)
        assert r == pytest.approx(_live_logp(ref, tok, p, "rejected"), abs=1e-4)

    def no_model():
        raise AssertionError("the reference model must not be loaded when every pair is cached")

    again, info = cached_reference_logps(path, enc[2:], "a" * 64, no_model, tok.pad_id)
    assert info["from_cache"] == 4 and torch.equal(again, logps[2:])
    # another reference checkpoint: recomputed, not reused
    other, info = cached_reference_logps(path, enc, "b" * 64, lambda: _model(tok, seed=2), tok.pad_id)
    assert info["computed"] == 6 and not torch.allclose(other, logps)
    assert "computed with reference sha256 aaaaaaaaaaaa" in caplog.text
    with pytest.raises(CacheError, match="reference sha256"):
        read_cache(path, "a" * 64)
    path.write_bytes(path.read_bytes()[:50])  # torn file
    with pytest.raises(CacheError, match=str(path.name)):
        read_cache(path, "b" * 64)
    write_cache(path, {enc[0].key: torch.tensor([0.5, -1.0])}, "b" * 64)  # a positive log-prob
    with pytest.raises(CacheError, match="finite and <= 0"):
        read_cache(path, "b" * 64)


def test_dpo_run_rejects_moves_accuracy_and_resumes_exactly(tok, tmp_path):
    from minigpt.train.dpo import build_dpo_trainer, make_pairs

    run, pairs_path = _make_run(tmp_path, tok)
    P = _params(run, pairs_path, max_steps=6, save_steps=3, eval_interval=3)
    pairs = make_pairs(P)
    assert len(pairs.train) == 22 and len(pairs.eval) == 2 and pairs.info["report"]["rejected"] == {"invalid_json": 1}
    rejects = [json.loads(x) for x in (run / "align" / "rejects.jsonl").read_text(encoding="utf-8").splitlines()]
    assert rejects[0]["line"] == 25 and rejects[0]["reason"] == "invalid_json"
    tr, info = build_dpo_trainer(P, pairs)
    assert info["reference_cache"]["computed"] == 24
    before = tr.evaluate()
    assert before["reward_accuracy"] == 0.5 and before["reward_margin"] == 0.0 and before["kl_ref"] == pytest.approx(0, abs=1e-6)
    tr.fit()
    after = tr.evaluate()
    assert after["reward_margin"] > 0.05 and after["reward_accuracy"] > 0.5 and after["kl_ref"] > 0
    recs = [json.loads(x) for x in (run / "align" / "metrics.jsonl").read_text(encoding="utf-8").splitlines()]
    assert [r["step"] for r in recs if "reward_accuracy" in r] == [3, 6] and all("train_reward_margin" in r for r in recs)
    # resume from step 3 into another folder: the same weights as the uninterrupted run, bit for bit
    tr2, info2 = build_dpo_trainer(_params(run, pairs_path, max_steps=6, save_steps=3, eval_interval=3,
                                           resume_from=str(run / "align" / "checkpoint_step_3"),
                                           output_dir=str(tmp_path / "resumed")))
    tr2.fit()
    a, b = tr.model.state_dict(), tr2.model.state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)
    # the first run's cache serves a new trainer in the same folder without the reference
    _, info3 = build_dpo_trainer(P, pairs)
    assert info3["reference_cache"] == {"pairs": 24, "from_cache": 24, "computed": 0}


def test_lora_dpo_trains_adapters_only_and_ipo_runs(tok, tmp_path):
    from minigpt.params import ParameterError
    from minigpt.train.checkpoint import load_checkpoint
    from minigpt.train.dpo import run_dpo

    run, pairs_path = _make_run(tmp_path, tok)
    out = run_dpo(_params(run, pairs_path, use_lora=True, lora_rank=2, lora_targets=["q_proj", "v_proj"],
                                       learning_rate=1e-2, loss_type="ipo", beta=0.5, max_steps=6, eval_interval=3, save_steps=3))
    assert out["info"]["lora"]["trainable_params"] < out["info"]["lora"]["total_params"] // 5
    assert (run / "align" / "checkpoint_step_3" / "adapter.safetensors").is_file()
    assert not (run / "align" / "checkpoint_step_3" / "model.safetensors").exists()
    merged, _, _ = load_checkpoint(run / "align" / "final_model")
    base, _, _ = load_checkpoint(run / "sft" / "final_model")
    assert not torch.equal(merged.layers[0].self_attn.q_proj.weight, base.layers[0].self_attn.q_proj.weight)
    assert torch.equal(merged.layers[0].mlp.up_proj.weight, base.layers[0].mlp.up_proj.weight)  # not a LoRA target
    losses = [json.loads(x)["loss"] for x in (run / "align" / "metrics.jsonl").read_text(encoding="utf-8").splitlines()]
    assert losses[0] == pytest.approx(1.0, abs=1e-4) and min(losses[1:]) < 0.9  # IPO at h = 0: (0 - 1/(2*0.5))^2 = 1
    with pytest.raises(ParameterError, match="loss_type"):
        run_dpo(_params(run, pairs_path, loss_type="kto"))
    with pytest.raises(ParameterError, match="label_smoothing"):
        run_dpo(_params(run, pairs_path, label_smoothing=0.7))


def test_notebook_07_parameters_are_align_parameters():
    import ast

    import nbformat

    from minigpt.params import registry
    from notebook_tools import NB_DIR

    nb = nbformat.read(NB_DIR / "07_align.ipynb", as_version=4)
    cell = next(c for c in nb.cells if "parameters" in c.metadata.get("tags", []))
    names = {t.id for node in ast.parse(cell.source).body for t in node.targets}
    assert names - {"config"} <= set(registry("align")), names - set(registry("align"))


@pytest.mark.slow
def test_notebook_07_runs_headless_after_04(tmp_path):
    """papermill 07 on a finished ci run (01 -> 06, made once per test process): the aligned model and its metrics."""
    import nbformat

    import notebook_runs

    run = notebook_runs.prepared_run(tmp_path / "run")
    executed = notebook_runs.execute(run, names=("07_align",))["07_align"]
    assert (run / "align" / "final_model" / "model.safetensors").is_file()
    assert (run / "align" / "reference_logps.safetensors").is_file()
    recs = [json.loads(x) for x in (run / "align" / "metrics.jsonl").read_text(encoding="utf-8").splitlines()]
    evals = [r for r in recs if "reward_accuracy" in r]
    assert evals and all(0 <= r["reward_accuracy"] <= 1 and r["kl_ref"] >= 0 for r in evals)
    text = json.dumps(nbformat.read(executed, as_version=4).cells, ensure_ascii=False)
    import re

    before = float(re.search(r"reward accuracy before DPO: ([0-9.]+)", text).group(1))
    assert 0.4 <= before <= 0.6 and "aligned (DPO)" in text
    assert "'source': 'skills'" in text  # params/ci.yaml: verifiable pairs from the built-in skills


def test_sft_weight_adds_the_chosen_replies_token_nll(tok):
    from types import SimpleNamespace

    from minigpt.align.data import pad_pairs
    from minigpt.align.dpo import dpo_losses
    from minigpt.align.reference import sequence_logps
    from minigpt.train.dpo import DPOConfig, DPOTrainer

    enc, _, _ = encode_pairs(tok, [parse_pair(p) for p in _pairs(3)], 96)
    model = _model(tok)
    x, y, _ = pad_pairs(enc, tok.pad_id)
    ref = torch.tensor([-30.0, -31.0, -32.0, -40.0, -41.0, -42.0])
    with torch.no_grad():
        policy = sequence_logps(model(x)[0], y)
        plain = dpo_losses(policy[:3], policy[3:], ref[:3], ref[3:], 0.1)[0].mean()
        fake = SimpleNamespace(dpo=DPOConfig(sft_weight=0.5), model=model, _train_sums=[])
        got = DPOTrainer._forward_loss(fake, model, x, y, {"ref_logps": ref})
    n_tokens = (y[:3] != -100).sum(-1)
    assert float(got) == pytest.approx(float(plain - 0.5 * (policy[:3] / n_tokens).mean()), abs=1e-6)
    assert fake._train_sums[0]["pairs"] == 3
