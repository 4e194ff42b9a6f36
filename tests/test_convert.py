"""Importing Hugging Face models (minigpt/convert.py): small random transformers models of each supported
architecture, built and saved here (nothing is downloaded), give the same logits and greedy tokens in minigpt;
the folder's own chat template gives AutoTokenizer's ids; unsupported models are refused by name."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

transformers = pytest.importorskip("transformers")
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers  # noqa: E402

from minigpt.convert import ImportRefused, import_hf, model_config_from_hf, resolve_init_from  # noqa: E402
from minigpt.data.tokenizer import MiniTokenizer  # noqa: E402
from minigpt.infer.generate import GenerationConfig, TextGenerator  # noqa: E402
from minigpt.train.checkpoint import load_checkpoint  # noqa: E402

# Qwen2.5's template in miniature: a default system message when the conversation has none.
QWEN_LIKE_TEMPLATE = (
    "{%- if messages[0]['role'] != 'system' %}{{- '<|im_start|>system\\nYou are a helpful assistant.<|im_end|>\\n' }}"
    "{%- endif %}"
    "{%- for message in messages %}{{- '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>\\n' }}"
    "{%- endfor %}"
    "{%- if add_generation_prompt %}{{- '<|im_start|>assistant\\n' }}{%- endif %}"
)
TEXTS = ["你好，世界。今天天气很好。", "The quick brown fox jumps over the lazy dog.", "长江、黄河都是中国的河流。",
         "hello world, hello model", "我们一起学习语言模型。"] * 20
SPECIALS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]


def write_tokenizer(folder: Path, chat: bool = True, template: str | None = QWEN_LIKE_TEMPLATE) -> int:
    """A small byte-level BPE with the ChatML specials added after the merges (ids not 0..3, as in Qwen's
    vocabulary), its tokenizer_config.json with `template`; returns the vocabulary size."""
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    tok.train_from_iterator(TEXTS, trainers.BpeTrainer(vocab_size=300, initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
                                                       show_progress=False))
    tok.add_special_tokens(SPECIALS if chat else SPECIALS[:1])
    folder.mkdir(parents=True, exist_ok=True)
    tok.save(str(folder / "tokenizer.json"))
    conf = {"tokenizer_class": "PreTrainedTokenizerFast", "eos_token": "<|im_end|>" if chat else "<|endoftext|>",
            "pad_token": "<|endoftext|>", "bos_token": None, "model_max_length": 128}
    if template:
        conf["chat_template"] = template
    (folder / "tokenizer_config.json").write_text(json.dumps(conf), encoding="utf-8")
    return tok.get_vocab_size()


def _randomize(model: torch.nn.Module, seed: int) -> None:
    """Weights far from transformers' init (norms around 1, biases non-zero), so every switch shows in the logits."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            p.copy_(torch.randn(p.shape, generator=g) * 0.15 + (1.0 if "norm" in name else 0.0))


def hf_config(kind: str, vocab: int, **over):
    common = dict(vocab_size=vocab, hidden_size=64, intermediate_size=96, num_hidden_layers=2, num_attention_heads=4,
                  num_key_value_heads=2, max_position_embeddings=128, rms_norm_eps=1e-6, rope_theta=500000.0)  # no default value
    if kind == "llama":  # GQA, untied, head_dim 24 != 64 / 4
        return transformers.LlamaConfig(**{**common, "head_dim": 24, "tie_word_embeddings": False, **over})
    if kind == "qwen2":  # q/k/v biases, tied
        return transformers.Qwen2Config(**{**common, "tie_word_embeddings": True, "use_sliding_window": False, **over})
    if kind == "qwen3":  # q/k norms, explicit head_dim 32
        return transformers.Qwen3Config(**{**common, "head_dim": 32, "tie_word_embeddings": True, **over})
    raise ValueError(kind)


def build_hf_folder(folder: Path, kind: str, seed: int = 0, **over) -> torch.nn.Module:
    vocab = write_tokenizer(folder) + 12  # the model's vocabulary padded beyond the tokenizer's, as Qwen's is
    cfg = hf_config(kind, vocab, **over)
    torch.manual_seed(seed)
    model = transformers.AutoModelForCausalLM.from_config(cfg).float().eval()
    _randomize(model, seed)
    model.save_pretrained(folder)
    return model


@pytest.fixture(scope="module", params=["llama", "qwen2", "qwen3"])
def imported(request, tmp_path_factory):
    root = tmp_path_factory.mktemp(request.param)
    hf = build_hf_folder(root / "hf", request.param, seed=1)
    out = import_hf(root / "hf", root / "minigpt")
    return request.param, root, hf, out


def test_config_switches(imported):
    kind, _root, _hf, out = imported
    _model, _tok, cfg = load_checkpoint(out)
    assert (cfg.attention_bias, cfg.qk_norm, cfg.tie_word_embeddings) == {
        "llama": (False, False, False), "qwen2": (True, False, True), "qwen3": (False, True, True)}[kind]
    assert cfg.head_dim == {"llama": 24, "qwen2": 16, "qwen3": 32}[kind]
    assert (cfg.n_heads, cfg.n_kv_heads, cfg.rms_norm_eps, cfg.max_seq_len, cfg.rope_theta) == (4, 2, 1e-6, 128, 500000.0)


def test_logits_match_transformers(imported):
    _kind, _root, hf, out = imported
    model, _tok, _cfg = load_checkpoint(out)
    ids = torch.tensor([[5, 17, 3, 99, 250, 7, 42, 300, 11, 64]])
    with torch.no_grad():
        ref = hf(ids).logits
        got, _ = model(ids)
    assert ref.abs().max() > 1.0  # non-trivial logits
    torch.testing.assert_close(got, ref, atol=1e-4, rtol=0)


def test_greedy_tokens_match_transformers(imported):
    _kind, _root, hf, out = imported
    model, tok, _cfg = load_checkpoint(out)
    prompt = [5, 17, 3, 99]
    hf.generation_config.eos_token_id = None
    hf.generation_config.pad_token_id = tok.pad_id
    with torch.no_grad():
        ref = hf.generate(torch.tensor([prompt]), do_sample=False, max_new_tokens=12, min_new_tokens=12)[0, 4:].tolist()
    gen = TextGenerator(model, tok, valid_utf8=False)  # sample as transformers does
    got = gen.generate_ids(prompt, GenerationConfig(do_sample=False, max_new_tokens=12, ignore_eos=True))
    assert got == ref


def test_special_tokens_by_name(imported):
    _kind, _root, _hf, out = imported
    tok = MiniTokenizer.load(out)
    base = tok.vocab_size - 3  # the three specials were added after the merges
    assert (tok.eos_id, tok.im_start_id, tok.im_end_id, tok.pad_id) == (base, base + 1, base + 2, base)
    assert {base, base + 1, base + 2} <= set(tok.special_ids)
    assert tok.normalize_version == 0
    # user text spelling a special token stays ordinary bytes in minigpt's own encode
    assert tok.im_end_id not in tok.encode("a<|im_end|>b")


def test_chat_template_ids_equal_autotokenizer(imported):
    _kind, _root, _hf, out = imported
    tok = MiniTokenizer.load(out)
    ref = transformers.AutoTokenizer.from_pretrained(str(out))
    convs = [
        [{"role": "user", "content": "你好"}, {"role": "assistant", "content": "你好！我是模型。"}],
        [{"role": "system", "content": "be brief"}, {"role": "user", "content": "hello world"},
         {"role": "assistant", "content": " hello"}, {"role": "user", "content": "长江"},
         {"role": "assistant", "content": "黄河\n"}],
    ]
    for conv in convs:
        for gen_prompt in (False, True):
            want = ref.apply_chat_template(conv, add_generation_prompt=gen_prompt, tokenize=True)
            want = want["input_ids"] if isinstance(want, dict) or hasattr(want, "keys") else want
            assert tok.apply_chat_template(conv, add_generation_prompt=gen_prompt) == list(want)
    # assistant-only targets: each reply's content and its <|im_end|>, nothing of the default system prompt
    segs = tok.chat_segments(convs[1])
    targets = [tok.decode(ids) for ids, t in segs if t]
    assert targets == [" hello<|im_end|>", "黄河\n<|im_end|>"]


def test_export_hf_round_trip(imported, tmp_path):
    from minigpt.infer.export import export_hf

    kind, _root, hf, out = imported
    export_hf(out, tmp_path / "hf")
    conf = json.loads((tmp_path / "hf" / "config.json").read_text())
    assert conf["model_type"] == {"llama": "llama", "qwen2": "qwen2", "qwen3": "qwen3"}[kind]
    # the imported tokenizer keeps its own template and special tokens
    assert json.loads((tmp_path / "hf" / "tokenizer_config.json").read_text())["chat_template"] == QWEN_LIKE_TEMPLATE
    back = transformers.AutoModelForCausalLM.from_pretrained(str(tmp_path / "hf"), dtype=torch.float32).eval()
    ids = torch.tensor([[5, 17, 3, 99, 250, 7]])
    with torch.no_grad():
        torch.testing.assert_close(back(ids).logits, hf(ids).logits, atol=1e-4, rtol=0)


def test_gguf_round_trip_greedy(imported, tmp_path):
    llama_cpp = pytest.importorskip("llama_cpp", reason="llama-cpp-python is not installed here; the GGUF round trip needs it")
    from minigpt.infer.gguf import export_gguf

    _kind, _root, _hf, out = imported
    path = export_gguf(out, tmp_path / "gguf")
    model, tok, _ = load_checkpoint(out)
    prompt = [5, 17, 3, 99]
    want = TextGenerator(model, tok, valid_utf8=False).generate_ids(prompt, GenerationConfig(do_sample=False, max_new_tokens=8, ignore_eos=True))
    llm = llama_cpp.Llama(model_path=str(path), n_ctx=64, verbose=False)
    got = []
    for t in llm.generate(prompt, temp=0.0, top_k=1):
        got.append(t)
        if len(got) == 8:
            break
    assert got == want


def test_c_decode_step_refuses_new_switches(imported):
    from minigpt.infer.backends import DecodeSteps


    kind, _root, _hf, out = imported
    model, _tok, _cfg = load_checkpoint(out)
    steps = DecodeSteps(model)
    reason = steps._native_unavailable()
    if kind == "qwen2":  # q/k/v biases: the C step does not read them, generation uses the forward
        assert steps.native_step() is None and "self_attn.q_proj.bias" in reason
    elif kind == "llama":  # head_dim 24 with d_model 64 and 4 heads: refused before building
        assert steps.native_step() is None and "head_dim=24" in reason


def test_init_from_reuses_the_import(imported, tmp_path):
    _kind, root, _hf, out = imported
    first = resolve_init_from(root / "hf", tmp_path / "import")
    stamp = (first / "manifest.json").stat().st_mtime_ns
    assert resolve_init_from(root / "hf", tmp_path / "import") == first
    assert (first / "manifest.json").stat().st_mtime_ns == stamp  # not imported twice
    assert resolve_init_from(out, tmp_path / "import") == out  # a minigpt checkpoint is used as it is


# ---- refusals, each naming what is refused and what is supported


def _config_folder(tmp_path: Path, conf: dict, tokenizer: bool = True) -> Path:
    folder = tmp_path / "m"
    folder.mkdir()
    if tokenizer:
        write_tokenizer(folder)
    (folder / "config.json").write_text(json.dumps(conf))
    return folder


BASE = {"hidden_size": 64, "num_hidden_layers": 2, "num_attention_heads": 4, "num_key_value_heads": 2,
        "intermediate_size": 96, "vocab_size": 320, "max_position_embeddings": 128}


@pytest.mark.parametrize("conf, message", [
    ({**BASE, "model_type": "qwen2_moe", "architectures": ["Qwen2MoeForCausalLM"]}, "mixture-of-experts model; MoE is not supported"),
    ({**BASE, "model_type": "minimind", "architectures": ["MiniMindForCausalLM"], "use_moe": True}, "use_moe=True"),
    ({**BASE, "model_type": "qwen2", "architectures": ["Qwen2ForCausalLM"], "use_sliding_window": True},
     "use_sliding_window=true: Qwen2ForCausalLM with sliding-window attention is not supported"),
    ({**BASE, "model_type": "llama", "architectures": ["LlamaForCausalLM"], "attention_bias": True},
     "attention_bias=true in LlamaForCausalLM"),
    ({**BASE, "model_type": "gpt2", "architectures": ["GPT2LMHeadModel"]},
     "model_type 'gpt2' (GPT2LMHeadModel) is not supported; supported: LlamaForCausalLM"),
    ({**BASE, "model_type": "llama", "architectures": ["LlamaForCausalLM"],
      "rope_scaling": {"rope_type": "llama3", "factor": 8.0}}, "rope_scaling (llama3) is not supported"),
    ({**BASE, "model_type": "minimind", "architectures": ["MiniMindForCausalLM"], "inference_rope_scaling": True},
     "inference_rope_scaling (yarn) is not supported"),
    ({**BASE, "model_type": "llama", "architectures": ["LlamaForCausalLM"], "hidden_act": "gelu"}, "hidden_act='gelu'"),
])
def test_refusals_name_the_field(tmp_path, conf, message):
    folder = _config_folder(tmp_path, conf)
    (folder / "model.safetensors").write_bytes(b"")  # never read: the config is refused first
    with pytest.raises(ImportRefused, match=None) as e:
        import_hf(folder, tmp_path / "out")
    assert message in str(e.value) and "config.json" in str(e.value)
    assert not (tmp_path / "out").exists()


def test_missing_tokenizer_json_is_refused(tmp_path):
    folder = _config_folder(tmp_path, {**BASE, "model_type": "llama", "architectures": ["LlamaForCausalLM"]}, tokenizer=False)
    with pytest.raises(ImportRefused, match=r"tokenizer\.json: not found; minigpt reads the fast tokenizer file"):
        import_hf(folder, tmp_path / "out")


def test_pickled_weights_are_refused(tmp_path):
    folder = _config_folder(tmp_path, {**BASE, "model_type": "llama", "architectures": ["LlamaForCausalLM"]})
    (folder / "pytorch_model.bin").write_bytes(b"not loaded")
    with pytest.raises(FileNotFoundError, match=r"no \*\.safetensors weights \(pytorch_model\.bin is a pickle"):
        import_hf(folder, tmp_path / "out")


def test_minimind_fields_map_one_to_one():
    """MiniMind's config.json names are Qwen3's; q/k norms are read from the weights (MiniMind-3 has them)."""
    conf = {"model_type": "minimind", "architectures": ["MiniMindForCausalLM"], "hidden_size": 768, "num_hidden_layers": 8,
            "num_attention_heads": 8, "num_key_value_heads": 4, "vocab_size": 6400, "use_moe": False, "num_experts": 4,
            "rope_theta": 1e6, "max_position_embeddings": 32768, "rms_norm_eps": 1e-6, "tie_word_embeddings": True,
            "inference_rope_scaling": False, "rope_scaling": None, "hidden_act": "silu", "flash_attn": True}
    cfg, mt = model_config_from_hf(conf, "config.json", {"model.layers.0.self_attn.q_norm.weight": (96,)})
    assert mt == "minimind" and cfg.qk_norm and cfg.head_dim == 96 and cfg.d_ff == 2432 and cfg.n_kv_heads == 4
    # MiniMind2: no q/k norms, intermediate_size null in config.json (derived in its code): read from the weights
    cfg2, _ = model_config_from_hf({**conf, "intermediate_size": None}, "config.json",
                                   {"model.layers.0.mlp.gate_proj.weight": (2048, 768)})
    assert not cfg2.qk_norm and cfg2.d_ff == 2048


def test_chat_needs_chatml_specials(tmp_path):
    folder = tmp_path / "tok"
    write_tokenizer(folder, chat=False)
    conf = json.loads((folder / "tokenizer_config.json").read_text())
    conf["minigpt_import"] = {"architecture": "LlamaForCausalLM", "source": "test"}
    (folder / "tokenizer_config.json").write_text(json.dumps(conf))
    tok = MiniTokenizer.load(folder)
    assert tok.encode("hello") and tok.eos_id == tok.vocab_size - 1  # pretraining works
    with pytest.raises(ValueError, match=r"has no <\|im_start\|> and no <\|im_end\|>; chat .* needs ChatML"):
        tok.apply_chat_template([{"role": "user", "content": "hi"}])


def test_gguf_writes_the_new_switches(imported, tmp_path):
    """qwen2 architecture with the q/k/v biases, head_dim in key/value length, the imported ids by name."""
    gguf = pytest.importorskip("gguf")
    from minigpt.infer.gguf import export_gguf

    kind, _root, _hf, out = imported
    model, tok, cfg = load_checkpoint(out)
    r = gguf.GGUFReader(str(export_gguf(out, tmp_path / "gguf")))

    def field(key):
        f = r.fields[key]
        v = f.parts[f.data[0]]
        return bytes(v).decode() if f.types[0] == gguf.GGUFValueType.STRING else v.tolist()[0]

    arch = {"llama": "llama", "qwen2": "qwen2", "qwen3": "qwen3"}[kind]
    assert field("general.architecture") == arch
    assert field(f"{arch}.attention.key_length") == cfg.head_dim == field(f"{arch}.attention.value_length")
    assert field(f"{arch}.rope.dimension_count") == cfg.head_dim
    assert (field("tokenizer.ggml.eos_token_id"), field("tokenizer.ggml.eot_token_id"),
            field("tokenizer.ggml.padding_token_id")) == (tok.eos_id, tok.im_end_id, tok.pad_id)
    names = {t.name for t in r.tensors}
    biases = {f"blk.{i}.attn_{x}.bias" for i in range(cfg.n_layers) for x in "qkv"}
    assert biases <= names if kind == "qwen2" else not biases & names


def test_gguf_refuses_a_pre_tokenizer_it_cannot_name(imported, tmp_path):
    from minigpt.infer.gguf import tokenizer_pre

    _kind, _root, _hf, out = imported
    folder = tmp_path / "tok"
    folder.mkdir()
    spec = json.loads((out / "tokenizer.json").read_text())
    spec["pre_tokenizer"] = {"type": "Sequence", "pretokenizers": [{"type": "Digits", "individual_digits": True},
                                                                   spec["pre_tokenizer"]]}
    (folder / "tokenizer.json").write_text(json.dumps(spec))
    (folder / "tokenizer_config.json").write_text((out / "tokenizer_config.json").read_text())
    with pytest.raises(ValueError, match=r"pre-tokenizer .*Digits.* is not one this GGUF export maps to llama\.cpp"):
        tokenizer_pre(MiniTokenizer.load(folder))
    assert tokenizer_pre(MiniTokenizer.load(out)) == "gpt-2"
    # Qwen2's layout (its split regex, then a regex-free ByteLevel) is llama.cpp's "qwen2"
    from minigpt.infer.gguf import QWEN2_SPLIT

    spec["pre_tokenizer"] = {"type": "Sequence", "pretokenizers": [
        {"type": "Split", "pattern": {"Regex": QWEN2_SPLIT}, "behavior": "Isolated", "invert": False},
        {"type": "ByteLevel", "add_prefix_space": False, "trim_offsets": False, "use_regex": False}]}
    (folder / "tokenizer.json").write_text(json.dumps(spec))
    assert tokenizer_pre(MiniTokenizer.load(folder)) == "qwen2"


@pytest.mark.slow
def test_imported_qwen3_through_notebook_04_lora_and_back_to_transformers(tmp_path):
    """import (the CLI) -> 04 with LoRA for a few steps, headless (papermill, init_from = the imported folder)
    -> export to transformers -> reload -> the same greedy tokens as minigpt's fine-tuned model."""
    import subprocess
    import sys

    pm = pytest.importorskip("papermill")
    from minigpt.infer.export import export_hf

    root = Path(__file__).resolve().parents[1]
    build_hf_folder(tmp_path / "hf", "qwen3", seed=3)
    done = subprocess.run([sys.executable, "-m", "minigpt.convert", str(tmp_path / "hf"), str(tmp_path / "imported")],
                          capture_output=True, text=True, cwd=root, timeout=300)
    assert done.returncode == 0, done.stderr
    run_dir = tmp_path / "run"
    pm.execute_notebook(str(root / "notebooks" / "04_sft.ipynb"), str(tmp_path / "04.ipynb"),
                        parameters={"config": "ci", "run_dir": str(run_dir), "init_from": str(tmp_path / "imported"),
                                    "chat_source": "chinese", "use_lora": True, "max_steps": 4, "skills_fraction": 0.0},
                        cwd=str(root), kernel_name="python3", progress_bar=False, execution_timeout=240)
    final = run_dir / "sft" / "final_model"
    model, tok, cfg = load_checkpoint(final)
    assert cfg.qk_norm and cfg.head_dim == 32 and (final / "adapter.safetensors").is_file()
    base, _, _ = load_checkpoint(tmp_path / "imported")
    assert not torch.equal(model.layers[0].self_attn.q_proj.weight, base.layers[0].self_attn.q_proj.weight)  # trained
    # then RL (notebook 08, GRPO with LoRA) on the built-in skills, through the imported tokenizer's chat template
    from minigpt.data.skills import SkillsConfig, write_run_skills

    write_run_skills(run_dir / "data", SkillsConfig(skills_train_per_family=8, skills_eval_per_family=2))
    pm.execute_notebook(str(root / "notebooks" / "08_rl.ipynb"), str(tmp_path / "08.ipynb"),
                        parameters={"config": "ci", "run_dir": str(run_dir), "use_lora": True, "max_steps": 2},
                        cwd=str(root), kernel_name="python3", progress_bar=False, execution_timeout=240)
    final = run_dir / "rl" / "final_model"
    model, tok, cfg = load_checkpoint(final)
    assert cfg.qk_norm and (final / "adapter.safetensors").is_file()
    records = [json.loads(line) for line in (run_dir / "rl" / "metrics.jsonl").read_text(encoding="utf-8").splitlines()]
    assert [r["step"] for r in records if "train_reward" in r] == [1, 2]
    export_hf(final, tmp_path / "export")
    back = transformers.AutoModelForCausalLM.from_pretrained(str(tmp_path / "export"), dtype=torch.float32).eval()
    prompt = tok.apply_chat_template([{"role": "user", "content": "你好"}], add_generation_prompt=True)
    back.generation_config.eos_token_id = None
    with torch.no_grad():
        ref = back.generate(torch.tensor([prompt]), do_sample=False, max_new_tokens=10, min_new_tokens=10)[0, len(prompt):]
    got = TextGenerator(model, tok, valid_utf8=False).generate_ids(
        prompt, GenerationConfig(do_sample=False, max_new_tokens=10, ignore_eos=True))
    assert got == ref.tolist()


def test_init_from_continues_pretraining_with_the_imported_tokenizer(imported, tmp_path):
    """03's builder with init_from: the HF folder is imported, the run's text is encoded with its tokenizer
    (documents separated by its <|endoftext|> id, not minigpt's 0), and training starts from its weights."""
    from minigpt.params import load_params
    from minigpt.train.pretrain import build_pretrain_trainer

    kind, root, hf, _out = imported
    if kind != "qwen2":
        pytest.skip("the builder's path is the same for every architecture; qwen2 (biases) runs it")
    data = tmp_path / "run" / "data"
    data.mkdir(parents=True)
    for split, n in (("train", 40), ("val", 8)):
        (data / f"{split}.jsonl").write_text("".join(json.dumps({"text": t}, ensure_ascii=False) + "\n" for t in TEXTS[:n]),
                                             encoding="utf-8")
    P = load_params("pretrain", config="ci", run_dir=str(tmp_path / "run"), init_from=str(root / "hf"), max_steps=2,
                    batch_size=2, seq_len=16, eval_interval=2, save_interval=2, show_widgets=False)
    trainer = build_pretrain_trainer(P)
    tok = trainer.tokenizer
    assert trainer.model_cfg.n_heads == 4 and tok.normalize_version == 0
    meta = json.loads((tmp_path / "run" / f"tokens_{tok.sha256[:12]}" / "meta.json").read_text())
    assert meta["eos_id"] == tok.eos_id != 0
    ids = torch.tensor([[5, 17, 3, 99]])
    with torch.no_grad():
        torch.testing.assert_close(trainer.model.eval()(ids)[0], hf(ids).logits, atol=1e-4, rtol=0)  # the imported weights
    trainer.model.train()
    trainer.fit()
    model, tok2, _ = load_checkpoint(tmp_path / "run" / "pretrain" / "final_model")
    assert tok2.sha256 == tok.sha256 and tok2.imported is not None


# Qwen3's template in miniature: the last assistant turn after the last user message gets an empty think block,
# earlier replies lose theirs; built with a namespace, `is defined`, split/lstrip, as the published one is.
QWEN3_LIKE_TEMPLATE = (
    "{%- set ns = namespace(last_user=0) %}"
    "{%- for m in messages %}{%- if m.role == 'user' %}{%- set ns.last_user = loop.index0 %}{%- endif %}{%- endfor %}"
    "{%- for m in messages %}"
    "{%- if m.role == 'assistant' %}"
    "{%- set content = m.content.split('</think>')[-1].lstrip('\\n') if '</think>' in m.content else m.content %}"
    "{%- if loop.index0 > ns.last_user %}{{- '<|im_start|>assistant\\n<think>\\n\\n</think>\\n\\n' + content + '<|im_end|>\\n' }}"
    "{%- else %}{{- '<|im_start|>assistant\\n' + content + '<|im_end|>\\n' }}{%- endif %}"
    "{%- else %}{{- '<|im_start|>' + m.role + '\\n' + m.content + '<|im_end|>\\n' }}{%- endif %}"
    "{%- endfor %}"
    "{%- if add_generation_prompt %}{{- '<|im_start|>assistant\\n' }}"
    "{%- if enable_thinking is defined and enable_thinking is false %}{{- '<think>\\n\\n</think>\\n\\n' }}{%- endif %}"
    "{%- endif %}"
)


def test_qwen3_style_template_ids_and_targets(tmp_path):
    folder = tmp_path / "tok"
    write_tokenizer(folder, template=QWEN3_LIKE_TEMPLATE)
    conf = json.loads((folder / "tokenizer_config.json").read_text())
    conf["minigpt_import"] = {"architecture": "Qwen3ForCausalLM", "source": "test"}
    (folder / "tokenizer_config.json").write_text(json.dumps(conf))
    tok, ref = MiniTokenizer.load(folder), transformers.AutoTokenizer.from_pretrained(str(folder))
    conv = [{"role": "user", "content": "你好"}, {"role": "assistant", "content": "你好！"},
            {"role": "user", "content": "长江"}, {"role": "assistant", "content": "黄河。"}]
    for gen_prompt in (False, True):
        want = ref.apply_chat_template(conv, add_generation_prompt=gen_prompt, tokenize=True)
        want = want["input_ids"] if hasattr(want, "keys") else want
        assert tok.apply_chat_template(conv, add_generation_prompt=gen_prompt) == list(want)
    # the empty think block of the last turn is prompt, not target
    assert [tok.decode(ids) for ids, t in tok.chat_segments(conv) if t] == ["你好！<|im_end|>", "黄河。<|im_end|>"]
    # a template that rewrites a reply (history with a think block) cannot give assistant-only targets: refused
    with pytest.raises(ValueError, match=r"does not render messages\[1\] \(assistant\)"):
        tok.chat_segments([{"role": "user", "content": "a"}, {"role": "assistant", "content": "<think>x</think>b"},
                           {"role": "user", "content": "c"}])


def test_minimind_folder_imports_like_qwen3(imported, tmp_path):
    """A MiniMind-3 folder is a Qwen3 folder under another model_type (the same field and tensor names)."""
    import shutil

    kind, root, hf, _out = imported
    if kind != "qwen3":
        pytest.skip("MiniMind-3's layout is Qwen3's")
    folder = tmp_path / "minimind"
    shutil.copytree(root / "hf", folder)
    conf = json.loads((folder / "config.json").read_text())
    conf.update(model_type="minimind", architectures=["MiniMindForCausalLM"], use_moe=False, num_experts=4,
                inference_rope_scaling=False, flash_attn=True)
    (folder / "config.json").write_text(json.dumps(conf))
    model, _tok, cfg = load_checkpoint(import_hf(folder, tmp_path / "out"))
    assert cfg.qk_norm and cfg.head_dim == 32
    ids = torch.tensor([[5, 17, 3, 99, 250]])
    with torch.no_grad():
        torch.testing.assert_close(model(ids)[0], hf(ids).logits, atol=1e-4, rtol=0)


def test_cli_refusal_is_one_line_naming_the_field(tmp_path, capsys):
    from minigpt.convert import main

    folder = _config_folder(tmp_path, {**BASE, "model_type": "qwen3_moe", "architectures": ["Qwen3MoeForCausalLM"]})
    assert main([str(folder), str(tmp_path / "out")]) == 1
    err = capsys.readouterr().err
    assert err.startswith("error: ") and "model_type 'qwen3_moe' is a mixture-of-experts model" in err
    assert "Traceback" not in err and not (tmp_path / "out").exists()
