"""ipywidgets panels for the notebooks. The generation panel (notebook 05) lives here.

Handlers are plain methods (`on_generate`, `on_clear`, `on_batch`) so tests call them without a kernel;
outputs are written with `out.outputs = (...)`, which works outside a kernel too (`with out:` does not).
Every control has a stable CSS class (`minigpt-...`) for the browser test.
"""
from __future__ import annotations

import dataclasses
import logging
import time
from typing import Any

import ipywidgets as W

from ..infer.generate import ChatSession, GenerationConfig, TextGenerator, read_prompts_file

logger = logging.getLogger(__name__)

_SLIDERS = {
    # name: (widget class, min, max, step)
    "temperature": (W.FloatSlider, 0.0, 2.0, 0.05),
    "top_k": (W.IntSlider, 0, 200, 1),
    "top_p": (W.FloatSlider, 0.05, 1.0, 0.05),
    "repetition_penalty": (W.FloatSlider, 1.0, 2.0, 0.05),
    "max_new_tokens": (W.IntSlider, 1, 1024, 1),
}


def _stdout(text: str) -> tuple:
    return ({"output_type": "stream", "name": "stdout", "text": text},)


class GenerationPanel(W.VBox):
    """Sliders, a prompt box, Generate / Clear buttons, a streaming output, chat mode and batch-from-file."""

    def __init__(self, generator: TextGenerator, defaults: GenerationConfig | None = None, prompt: str | None = "",
                 prompts_file: str | None = "", refresh_s: float = 0.05) -> None:
        prompt, prompts_file = prompt or "", str(prompts_file or "")  # notebook parameters may be None
        self.generator = generator
        self.defaults = defaults or GenerationConfig()
        self.refresh_s = refresh_s
        self.sliders: dict[str, W.Widget] = {}
        for name, (cls, lo, hi, step) in _SLIDERS.items():
            value = getattr(self.defaults, name)
            hi = max(hi, value)
            if name == "max_new_tokens":
                hi = max(hi, generator.cfg.max_seq_len)
            s = cls(value=value, min=lo, max=hi, step=step, description=name, continuous_update=False,
                    style={"description_width": "140px"}, layout=W.Layout(width="460px"))
            s.add_class(f"minigpt-{name.replace('_', '-')}")
            s.observe(self._on_param, names="value")
            self.sliders[name] = s
        self.greedy = W.Checkbox(value=not self.defaults.do_sample, description="greedy")
        self.greedy.add_class("minigpt-greedy")
        self.greedy.observe(self._on_param, names="value")
        self.mode = W.ToggleButtons(options=["generate", "chat"], value="generate", description="mode")
        self.mode.add_class("minigpt-mode")
        self.mode.observe(self._on_mode, names="value")
        self.prompt = W.Textarea(value=prompt, placeholder="prompt / your message", layout=W.Layout(width="600px", height="70px"))
        self.prompt.add_class("minigpt-prompt")
        self.generate_button = W.Button(description="Generate", button_style="primary")
        self.generate_button.add_class("minigpt-generate")
        self.generate_button.on_click(lambda _b: self.on_generate())
        self.clear_button = W.Button(description="Clear")
        self.clear_button.add_class("minigpt-clear")
        self.clear_button.on_click(lambda _b: self.on_clear())
        self.prompts_file = W.Text(value=prompts_file, placeholder="prompts.txt (one prompt a line)", description="file")
        self.prompts_file.add_class("minigpt-prompts-file")
        self.batch_button = W.Button(description="Batch")
        self.batch_button.add_class("minigpt-batch")
        self.batch_button.on_click(lambda _b: self.on_batch())
        self.output = W.Output(layout=W.Layout(border="1px solid #ddd", min_height="80px", width="720px"))
        self.output.add_class("minigpt-output")
        self.status = W.HTML(value="")
        self.status.add_class("minigpt-status")
        self.session = ChatSession(generator, self.config())
        self.last_text = ""
        self.transcript = ""
        super().__init__([
            W.HBox([W.VBox(list(self.sliders.values()) + [self.greedy]), self.mode]),
            self.prompt,
            W.HBox([self.generate_button, self.clear_button]),
            W.HBox([self.prompts_file, self.batch_button]),
            self.output,
            self.status,
        ])
        self.add_class("minigpt-generation-panel")

    # ---- state

    def config(self) -> GenerationConfig:
        """The GenerationConfig the controls describe now (other fields from `defaults`)."""
        values = {name: s.value for name, s in self.sliders.items()}
        return dataclasses.replace(self.defaults, do_sample=not self.greedy.value, **values)

    def _on_param(self, change: dict[str, Any]) -> None:
        self.session.config = self.config()
        self.status.value = f"<code>{self._describe(self.session.config)}</code>"

    def _on_mode(self, change: dict[str, Any]) -> None:
        self.generate_button.description = "Send" if change["new"] == "chat" else "Generate"
        self.on_clear()

    @staticmethod
    def _describe(cfg: GenerationConfig) -> str:
        if cfg.greedy:
            return f"greedy, max_new_tokens={cfg.max_new_tokens}, repetition_penalty={cfg.repetition_penalty}"
        return (f"temperature={cfg.temperature}, top_k={cfg.top_k}, top_p={cfg.top_p}, "
                f"repetition_penalty={cfg.repetition_penalty}, max_new_tokens={cfg.max_new_tokens}")

    def _show(self, text: str) -> None:
        self.output.outputs = _stdout(text)

    # ---- handlers

    def on_generate(self) -> str:
        """Generate (or, in chat mode, send the message) and stream into the output. Returns the new text."""
        try:
            cfg = self.config()  # a GenerationConfig checks itself when made
        except ValueError as e:
            self._show(f"error: {e}\n")
            return ""
        self.generate_button.disabled = True
        t0, last = time.perf_counter(), 0.0
        pieces: list[str] = []
        try:
            if self.mode.value == "chat":
                # shown as the model reads it (minigpt.data.normalize: Chinese punctuation, widths)
                user = self.generator.normalize(self.prompt.value.strip())
                if not user:
                    self._show(self.transcript + "(type a message first)\n")
                    return ""
                head = self.transcript + f"👤 {user}\n🤖 "
                stream = self.session.stream(user, cfg)
                self.prompt.value = ""
            else:
                head = self.generator.normalize(self.prompt.value)
                stream = self.generator.stream(head, cfg)
            self._show(head)
            for piece in stream:
                pieces.append(piece)
                now = time.perf_counter()
                if now - last >= self.refresh_s:  # throttle: each update re-sends the whole output
                    self._show(head + "".join(pieces))
                    last = now
            text = "".join(pieces)
            if self.mode.value == "chat":
                self.transcript = head + text.strip() + "\n"
                self._show(self.transcript)
            else:
                self._show(head + text)
            self.last_text = text
            stats = self.generator.last_stats
            self.status.value = (f"<code>{stats.get('new_tokens', 0)} tokens in {time.perf_counter() - t0:.2f}s "
                                 f"({stats.get('tokens_per_s', 0):.0f} tokens/s, {stats.get('backend')} decode step"
                                 f"{', int8 weights' if stats.get('quantize') else ''}); {self._describe(cfg)}</code>")
            return text
        except Exception as e:  # show the error in the panel; the notebook keeps running
            logger.exception("generation failed")
            self._show(f"error: {type(e).__name__}: {e}\n")
            return ""
        finally:
            self.generate_button.disabled = False

    def on_clear(self) -> None:
        """Forget the chat history and empty the output."""
        self.session.clear()
        self.transcript = ""
        self.last_text = ""
        self.output.outputs = ()
        self.status.value = ""

    def on_batch(self) -> list[str]:
        """Generate for every line of the prompts file, as one batch; show prompt → continuation pairs."""
        try:
            prompts = [self.generator.normalize(p) for p in read_prompts_file(self.prompts_file.value)]
            results = self.generator.batch_generate(prompts, self.config())
        except (OSError, ValueError) as e:
            self._show(f"error: {e}\n")
            return []
        self._show("".join(f"[{i}] {p}{r}\n" for i, (p, r) in enumerate(zip(prompts, results), 1)))
        self.last_text = "\n".join(results)
        return results
