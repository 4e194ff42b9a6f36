"""GGUF export: read back with `gguf.GGUFReader` (tensors, shapes, tokenizer metadata), the q/k reorder
for llama.cpp's RoPE, QK-norm models as llama.cpp's qwen3, the CLI with its Ollama Modelfile, and, where
`llama_cpp` is importable, llama.cpp's own tokenization and greedy tokens against minigpt's."""
from __future__ import annotations

import json
import logging

import numpy as np
import pytest
import torch

gguf = pytest.importorskip("gguf")

from minigpt.infer.config import GenerationConfig  # noqa: E402
from minigpt.infer.generate import TextGenerator  # noqa: E402
from minigpt.infer.gguf import gguf_tensors, interleave_rope_rows, modelfile, write_gguf  # noqa: E402
from minigpt.model.gpt import apply_rope, rope_tables  # noqa: E402
from minigpt.train.checkpoint import save_checkpoint  # noqa: E402
from conftest import MIXED_LINES, mixed_corpus, tiny_gpt, tiny_tokenizer, train_briefly  # noqa: E402

pytestmark = pytest.mark.usefixtures("one_thread")
logger = logging.getLogger(__name__)

PROMPTS = ["长江、黄河是中国的两条大河。", "今天天气很好，", "Hello, how are you", "人工智能"]
HELD = ["北京是一座历史悠久的城市，有很多名胜古迹。", "The quick brown fox jumps over 13 lazy dogs!  Twice...",
        "他说：“你好吗？”我回答：“很好，谢谢。”", "tabs\tand\nnew lines  \n\n spaces", "混合 mixed 文本 text 123，４５６"]


def training_batches(tok, steps: int = 40) -> list[torch.Tensor]:
    """Seeded random windows of the test corpus, 8 x 33 tokens a step."""
    ids = [t for doc in mixed_corpus(n=60) for t in tok.encode(doc) + [tok.eos_id]]
    g = torch.Generator().manual_seed(0)
    data = torch.tensor(ids)
    return [torch.stack([data[i:i + 33] for i in torch.randint(0, len(ids) - 33, (8,), generator=g).tolist()])
            for _ in range(steps)]


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A briefly trained model (real, peaked distributions) and its checkpoint folder."""
    tmp = tmp_path_factory.mktemp("gguf")
    tok = tiny_tokenizer(vocab_size=330)
    tok.save(tmp / "tok")
    model = tiny_gpt(tok.vocab_size, d_model=64, n_heads=4, n_kv_heads=2, max_seq_len=64)
    train_briefly(model, training_batches(tok), lr=1e-2)
    ckpt = save_checkpoint(tmp / "ckpt", model, {"model": model.config.to_dict(), "tokenizer_sha256": tok.sha256},
                           tokenizer_dir=tmp / "tok")
    return model, tok, ckpt


def field(reader, key):
    return reader.fields[key].contents()


@pytest.mark.parametrize("outtype", ["f32", "f16", "q8_0"])
def test_read_back(trained, tmp_path, outtype):
    model, tok, _ = trained
    path = write_gguf(model, tok, tmp_path / "m.gguf", outtype)
    r = gguf.GGUFReader(str(path))
    c = model.config
    assert field(r, "general.architecture") == "llama"
    assert field(r, "llama.block_count") == c.n_layers and field(r, "llama.context_length") == c.max_seq_len
    assert field(r, "llama.attention.head_count") == 4 and field(r, "llama.attention.head_count_kv") == 2
    assert field(r, "llama.rope.dimension_count") == c.head_dim and field(r, "llama.rope.freq_base") == c.rope_theta
    assert field(r, "tokenizer.ggml.model") == "gpt2" and field(r, "tokenizer.ggml.pre") == "gpt-2"
    tokens = field(r, "tokenizer.ggml.tokens")
    assert len(tokens) == c.vocab_size and tokens[:4] == ["<|endoftext|>", "<|im_start|>", "<|im_end|>", "<|pad|>"]
    assert tokens[10] == tok.id_to_token(10)
    types = field(r, "tokenizer.ggml.token_type")
    assert types[:5] == [gguf.TokenType.CONTROL] * 4 + [gguf.TokenType.NORMAL]
    merges = json.loads(tok.to_json())["model"]["merges"]
    assert len(field(r, "tokenizer.ggml.merges")) == len(merges)
    assert (field(r, "tokenizer.ggml.bos_token_id"), field(r, "tokenizer.ggml.eos_token_id"),
            field(r, "tokenizer.ggml.eot_token_id"), field(r, "tokenizer.ggml.padding_token_id")) == (0, 0, 2, 3)
    assert field(r, "tokenizer.ggml.add_bos_token") is False
    assert "<|im_start|>" in field(r, "tokenizer.chat_template")
    want = gguf_tensors(model)
    got = {t.name: t for t in r.tensors}
    assert set(got) == set(want) and "output.weight" not in got  # tied head: llama.cpp reuses token_embd
    assert len(got) == 2 + 9 * c.n_layers
    for name, t in want.items():
        g = got[name]
        assert list(g.shape) == list(reversed(t.shape)), name  # GGUF lists the fastest dimension first
        if outtype == "f32" or t.dim() == 1:
            assert np.array_equal(np.asarray(g.data).reshape(t.shape), t.numpy()), name
        expected = {"f32": "F32", "f16": "F16", "q8_0": "Q8_0"}[outtype] if t.dim() == 2 else "F32"
        assert g.tensor_type.name == expected, name
        if outtype == "q8_0" and t.dim() == 2:
            back = gguf.quants.dequantize(np.asarray(g.data), g.tensor_type).reshape(t.shape)
            assert np.abs(back - t.numpy()).max() <= np.abs(t.numpy()).max() / 127 + 1e-6, name


def _interleaved_rope(x: torch.Tensor, pos: torch.Tensor, theta: float) -> torch.Tensor:
    """RoPE on adjacent pairs (2i, 2i + 1), llama.cpp's llama layout. x: (T, D)."""
    D = x.shape[-1]
    inv = 1.0 / theta ** (torch.arange(0, D, 2, dtype=torch.float32) / D)
    ang = pos[:, None].float() * inv[None]
    a, b = x[:, 0::2], x[:, 1::2]
    out = torch.empty_like(x)
    out[:, 0::2], out[:, 1::2] = a * ang.cos() - b * ang.sin(), a * ang.sin() + b * ang.cos()
    return out


def test_qk_reorder_gives_the_same_attention_scores():
    """Attention scores with minigpt's rotate-half RoPE on the original q/k weights equal those with
    llama.cpp's adjacent-pair RoPE on the reordered weights (without the reorder they would not)."""
    torch.manual_seed(0)
    H, D, d, T, theta = 2, 8, 16, 6, 10000.0
    wq, wk, x = torch.randn(H * D, d), torch.randn(H * D, d), torch.randn(T, d)
    cos, sin = rope_tables(D, T, theta)
    heads = lambda w: (x @ w.T).view(T, H, D).transpose(0, 1)  # noqa: E731  (H, T, D)
    q, k = apply_rope(heads(wq), cos, sin), apply_rope(heads(wk), cos, sin)
    reference = q @ k.transpose(-1, -2)

    def llama_cpp_scores(wq, wk):
        rope = lambda h: torch.stack([_interleaved_rope(t, torch.arange(T), theta) for t in h])  # noqa: E731
        return rope(heads(wq)) @ rope(heads(wk)).transpose(-1, -2)

    assert torch.allclose(llama_cpp_scores(interleave_rope_rows(wq, H), interleave_rope_rows(wk, H)), reference,
                          atol=1e-4)
    assert not torch.allclose(llama_cpp_scores(wq, wk), reference, atol=1e-2)


def test_cli_writes_gguf_and_modelfile(trained, tmp_path, capsys, caplog):
    from minigpt.infer.export import main

    _, _, ckpt = trained
    with caplog.at_level(logging.INFO):
        assert main([str(ckpt), str(tmp_path / "out"), "--format", "gguf", "--outtype", "q8_0"]) == 0
    # only minigpt's own line: not gguf's "Writing the following files" with the temporary file's path
    assert not [r for r in caplog.records if r.name.startswith("gguf")] and ".tmp" not in caplog.text
    assert "wrote minigpt-q8_0.gguf and an Ollama Modelfile" in caplog.text
    assert ".tmp" not in capsys.readouterr().out
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["Modelfile", "minigpt-q8_0.gguf"]
    text = (tmp_path / "out" / "Modelfile").read_text()
    assert text == modelfile("minigpt-q8_0.gguf", 64)
    assert text.startswith("FROM ./minigpt-q8_0.gguf") and 'PARAMETER stop "<|im_end|>"' in text
    assert "<|im_start|>{{ .Role }}" in text
    assert main([str(tmp_path / "nope"), str(tmp_path / "x"), "--format", "gguf"]) == 1
    assert "nope" in capsys.readouterr().err and not (tmp_path / "x").exists()


# --------------------------------------------------------------------------- llama.cpp itself


def _llama(path, n_ctx=64):
    llama_cpp = pytest.importorskip("llama_cpp", reason="llama-cpp-python is not installed (pip install "
                                    "llama-cpp-python builds llama.cpp from source; not part of make setup)")
    return llama_cpp.Llama(str(path), n_ctx=n_ctx, n_threads=1, verbose=False, seed=0)


def _greedy_llama(llm, ids, n):
    out = []
    llm.reset()
    for t in llm.generate(ids, temp=0.0, top_k=1, top_p=1.0, repeat_penalty=1.0, reset=True):
        out.append(t)
        if len(out) == n:
            break
    return out


@pytest.fixture(scope="module")
def llama_files(trained, tmp_path_factory):
    pytest.importorskip("llama_cpp", reason="llama-cpp-python is not installed (pip install llama-cpp-python "
                        "builds llama.cpp from source; not part of make setup)")
    model, tok, _ = trained
    tmp = tmp_path_factory.mktemp("llama")
    return {t: write_gguf(model, tok, tmp / f"m-{t}.gguf", t) for t in ("f32", "f16", "q8_0")}


def test_llama_cpp_tokenizes_like_minigpt(trained, llama_files):
    _, tok, _ = trained
    llm = _llama(llama_files["f32"])
    try:
        for text in HELD + MIXED_LINES:
            assert llm.tokenize(text.encode("utf-8"), add_bos=False, special=False) == tok.encode(text), text
        assert llm.token_bos() == 0 and llm.token_eos() == 0
    finally:
        llm.close()


def test_llama_cpp_greedy_tokens_equal_minigpt_in_f32(trained, llama_files):
    model, tok, _ = trained
    gen = TextGenerator(model, tok, valid_utf8=False)  # llama.cpp samples from the distribution as it is
    cfg = GenerationConfig(max_new_tokens=24, do_sample=False, ignore_eos=True)
    llms = {t: _llama(p) for t, p in llama_files.items()}
    try:
        agree = {t: [] for t in llms}
        for prompt in PROMPTS:
            ids = tok.encode(prompt)
            ours = gen.generate_ids(ids, cfg)
            for t, llm in llms.items():
                theirs = _greedy_llama(llm, ids, len(ours))
                if t == "f32":
                    assert theirs == ours, prompt
                same = next((i for i, (a, b) in enumerate(zip(ours, theirs)) if a != b), len(ours))
                agree[t].append(same)
        for t, n in agree.items():  # the drift of the smaller types: tokens equal before the first difference
            logger.warning("llama.cpp %s: first %s of %d greedy tokens equal minigpt's", t, n, cfg.max_new_tokens)
    finally:
        for llm in llms.values():
            llm.close()


def test_relu2_which_llama_cpp_cannot_compute_is_refused():
    from minigpt import GPT, ModelConfig

    model = GPT(ModelConfig(vocab_size=64, d_model=32, n_layers=1, n_heads=2, n_kv_heads=1, mlp="relu2"))
    with pytest.raises(ValueError, match="mlp='relu2': llama.cpp's llama and qwen3 architectures have only the SwiGLU"):
        gguf_tensors(model)


@pytest.fixture(scope="module")
def trained_qk_norm(trained):
    """The trained model's shape with q/k norms, trained the same way; norm weights away from 1."""
    model, tok, _ = trained
    qk = tiny_gpt(tok.vocab_size, d_model=64, n_heads=4, n_kv_heads=2, max_seq_len=64, qk_norm=True)
    train_briefly(qk, training_batches(tok), lr=1e-2)
    with torch.no_grad():  # training moves them little in 40 steps; a writer that dropped them must be seen
        for name, p in qk.named_parameters():
            if name.endswith(("q_norm.weight", "k_norm.weight")):
                p.mul_(torch.linspace(0.5, 1.5, p.numel()))
    return qk, tok


def test_qk_norm_becomes_qwen3_without_the_rope_reorder(trained_qk_norm, tmp_path):
    model, tok = trained_qk_norm
    tensors = gguf_tensors(model)
    a = model.layers[1].self_attn
    assert torch.equal(tensors["blk.1.attn_q.weight"], a.q_proj.weight.detach())  # qwen3's RoPE is rotate-half
    assert torch.equal(tensors["blk.1.attn_k.weight"], a.k_proj.weight.detach())
    assert torch.equal(tensors["blk.1.attn_q_norm.weight"], a.q_norm.weight.detach())
    assert torch.equal(tensors["blk.1.attn_k_norm.weight"], a.k_norm.weight.detach())
    r = gguf.GGUFReader(str(write_gguf(model, tok, tmp_path / "qk.gguf", "f32")))
    assert field(r, "general.architecture") == "qwen3"
    assert field(r, "qwen3.block_count") == model.config.n_layers
    assert field(r, "qwen3.attention.key_length") == model.config.head_dim
    names = {t.name for t in r.tensors}
    assert {f"blk.{i}.attn_{x}_norm.weight" for i in range(model.config.n_layers) for x in "qk"} <= names


def test_llama_cpp_greedy_tokens_equal_minigpt_with_qk_norm(trained_qk_norm, tmp_path):
    model, tok = trained_qk_norm
    llm = _llama(write_gguf(model, tok, tmp_path / "qk.gguf", "f32"))
    gen = TextGenerator(model, tok, valid_utf8=False)
    cfg = GenerationConfig(max_new_tokens=24, do_sample=False, ignore_eos=True)
    try:
        for prompt in PROMPTS:
            ids = tok.encode(prompt)
            ours = gen.generate_ids(ids, cfg)
            assert _greedy_llama(llm, ids, len(ours)) == ours, prompt
    finally:
        llm.close()


def test_untied_head_becomes_the_output_tensor():
    from minigpt import GPT, ModelConfig

    model = GPT(ModelConfig(vocab_size=64, d_model=32, n_layers=1, n_heads=2, n_kv_heads=1, tie_word_embeddings=False))
    tensors = gguf_tensors(model)
    assert torch.equal(tensors["output.weight"], model.lm_head.weight.detach())
    assert not torch.equal(tensors["output.weight"], tensors["token_embd.weight"])
