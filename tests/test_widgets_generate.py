"""widgets.GenerationPanel: handlers called from pytest, no kernel."""
from __future__ import annotations


import pytest
import torch

from minigpt.infer.generate import GenerationConfig, TextGenerator
from conftest import tiny_gpt, tiny_tokenizer
from minigpt.ui.widgets import GenerationPanel

LINES = ["长江、黄河是中国的两条大河。", "今天天气很好，我们去公园散步。", "你好，很高兴认识你。", "Hello, how are you?"]


pytestmark = pytest.mark.usefixtures("one_thread")  # conftest: tiny models, one torch thread


@pytest.fixture(scope="module")
def gen():
    tok = tiny_tokenizer(LINES)
    model = tiny_gpt(tok.vocab_size, max_seq_len=64)
    with torch.no_grad():
        model.embed_tokens.weight.normal_(0, 0.5)
    return TextGenerator(model.eval(), tok)


def text_of(panel) -> str:
    return "".join(o.get("text", "") for o in panel.output.outputs)


def test_sliders_set_config(gen):
    panel = GenerationPanel(gen, GenerationConfig(max_new_tokens=12, temperature=0.8), prompt="你好")
    assert set(panel.sliders) == {"temperature", "top_k", "top_p", "repetition_penalty", "max_new_tokens"}
    panel.sliders["temperature"].value = 1.3
    panel.sliders["top_k"].value = 7
    panel.sliders["max_new_tokens"].value = 9
    cfg = panel.config()
    assert (cfg.temperature, cfg.top_k, cfg.max_new_tokens) == (1.3, 7, 9)
    assert "temperature=1.3" in panel.status.value  # the observer fired
    assert "minigpt-temperature" in panel.sliders["temperature"]._dom_classes
    assert "minigpt-prompt" in panel.prompt._dom_classes and "minigpt-output" in panel.output._dom_classes


def test_generate_streams_into_output(gen):
    defaults = GenerationConfig(max_new_tokens=10, do_sample=False, ignore_eos=True)
    panel = GenerationPanel(gen, defaults, prompt="长江、")
    panel.refresh_s = 0.0
    seen = []
    panel.output.observe(lambda ch: seen.append(ch["new"]), names="outputs")
    text = panel.on_generate()
    assert text == gen.generate("长江、", defaults)
    assert text_of(panel) == "长江、" + text
    assert len(seen) >= 2  # updated while streaming, not only at the end
    assert "tokens/s" in panel.status.value
    panel.greedy.value = False
    panel.defaults = defaults.replace(seed=1)
    assert panel.config().do_sample and panel.config().seed == 1


def test_chat_mode_history_and_clear(gen):
    panel = GenerationPanel(gen, GenerationConfig(max_new_tokens=6, seed=0))
    panel.mode.value = "chat"
    assert panel.generate_button.description == "Send"
    panel.prompt.value = "你好"
    r1 = panel.on_generate()
    assert panel.prompt.value == ""
    panel.prompt.value = "介绍一下中国"
    panel.on_generate()
    assert [m["role"] for m in panel.session.history] == ["user", "assistant", "user", "assistant"]
    assert panel.session.history[1]["content"] == r1.strip()
    out = text_of(panel)
    assert "👤 你好" in out and "👤 介绍一下中国" in out
    panel.clear_button.click()
    assert panel.session.history == [] and panel.output.outputs == ()


def test_batch_from_prompts_file(gen, tmp_path):
    f = tmp_path / "prompts.txt"
    f.write_text("中国\n长江、黄河\n\n你好，好久不见\n", encoding="utf-8")
    cfg = GenerationConfig(max_new_tokens=6, do_sample=False, ignore_eos=True)
    panel = GenerationPanel(gen, cfg, prompts_file=str(f))
    results = panel.on_batch()
    assert results == gen.batch_generate(["中国", "长江、黄河", "你好，好久不见"], cfg)
    out = text_of(panel)
    assert out.startswith("[1] 中国") and "[3] 你好，好久不见" in out
    panel.prompts_file.value = str(tmp_path / "missing.txt")
    assert panel.on_batch() == [] and "missing.txt" in text_of(panel)


def test_none_parameters_are_accepted(gen):
    from minigpt.ui.widgets import GenerationPanel

    panel = GenerationPanel(gen, GenerationConfig(max_new_tokens=3), prompt=None, prompts_file=None)
    assert panel.prompt.value == "" and panel.prompts_file.value == ""


def test_bad_value_shows_error(gen):
    panel = GenerationPanel(gen, GenerationConfig(max_new_tokens=5))
    panel.defaults.no_repeat_ngram_size = -1  # a bad value (replace() would refuse it): the next config() fails
    assert panel.on_generate() == ""
    assert "no_repeat_ngram_size" in text_of(panel)
