"""The notebook-03/04 control panel: widgets that set the same parameters as the parameters cell,
and Start/Stop buttons that run the same Trainer in a background thread (the kernel stays responsive)."""
from __future__ import annotations

import logging
import threading
from typing import Any, Callable

import ipywidgets as w

from ..params import Params

logger = logging.getLogger(__name__)


class TrainingPanel:
    """Controls for preset, learning rate, steps, batch size, compile and guard limits.

    `build_trainer(params)` must return a Trainer; Start calls it with the panel's values merged over
    the notebook's parameters and runs `fit()` in a thread; Stop asks the trainer to save and return.
    """

    def __init__(self, params: Params, build_trainer: Callable[[Params], Any], presets=("tiny", "small", "medium")) -> None:
        self.params = params
        self.build_trainer = build_trainer
        self.trainer = None
        self.thread: threading.Thread | None = None
        self.result: dict | None = None
        self.error: BaseException | None = None
        style = {"description_width": "110px"}
        self.controls: dict[str, w.Widget] = {
            "preset": w.Dropdown(options=list(presets), value=params.get("preset") or presets[0], description="preset", style=style),
            "learning_rate": w.FloatLogSlider(value=params["learning_rate"], base=10, min=-6, max=-1, step=0.1,
                                              description="learning_rate", readout_format=".1e", style=style),
            "max_steps": w.IntText(value=params["max_steps"], description="max_steps", style=style),
            "batch_size": w.IntSlider(value=params["batch_size"], min=1, max=128, description="batch_size", style=style),
            "enable_compile": w.Checkbox(value=bool(params["enable_compile"]), description="enable_compile", style=style),
        }
        if "max_cpu" in params:
            # 0 means "no limit" (TrainConfig's default): the sliders must be able to hold it, or the guard
            # would silently pause training at a 10% limit
            self.controls["max_cpu"] = w.FloatSlider(value=params["max_cpu"] or 0.0, min=0, max=100, step=5,
                                                     description="max_cpu %", tooltip="0 = no limit", style=style)
            self.controls["max_memory"] = w.FloatSlider(value=params["max_memory"] or 0.0, min=0, max=100, step=5,
                                                        description="max_memory %", tooltip="0 = no limit", style=style)
        if "preset" not in params:
            self.controls.pop("preset")
        for name, ctrl in self.controls.items():
            ctrl.add_class(f"minigpt-{name.replace('_', '-')}")
        self.start_button = w.Button(description="Start", button_style="success", icon="play")
        self.stop_button = w.Button(description="Stop", button_style="danger", icon="stop", disabled=True)
        self.start_button.add_class("minigpt-start")
        self.stop_button.add_class("minigpt-stop")
        self.status = w.HTML(value="idle")
        self.status.add_class("minigpt-status")
        self.output = w.Output()
        self.output.add_class("minigpt-train-output")
        self.start_button.on_click(lambda _: self.on_start())
        self.stop_button.on_click(lambda _: self.on_stop())
        self.widget = w.VBox([
            w.HBox([w.VBox(list(self.controls.values())), w.VBox([self.start_button, self.stop_button, self.status])]),
            self.output,
        ])

    def values(self) -> dict[str, Any]:
        return {k: c.value for k, c in self.controls.items()}

    def merged_params(self) -> Params:
        p = Params(self.params)
        p.update(self.values())
        return p

    def on_start(self, block: bool = False) -> None:
        if self.thread is not None and self.thread.is_alive():
            return
        self.result, self.error = None, None
        try:  # bad values or missing files: say so in the panel, not only in the kernel log
            self.trainer = self.build_trainer(self.merged_params())
        except Exception as e:
            self.error, self.trainer = e, None
            self.status.value = f"error: {type(e).__name__}: {e}"
            logger.exception("could not build the trainer")
            return
        self.start_button.disabled, self.stop_button.disabled = True, False
        self.status.value = "training…"
        self.thread = threading.Thread(target=self._run, name="minigpt-train", daemon=True)
        self.thread.start()
        if block:
            self.thread.join()

    def _run(self) -> None:
        try:
            self.result = self.trainer.fit()
            saved = self.trainer.output_dir / f"checkpoint_step_{self.result['step']}"
            self.status.value = (f"done: step {self.result['step']} ({self.result['stop_reason']}); "
                                 f"checkpoint {saved.name if saved.is_dir() else 'none'}")
        except BaseException as e:  # shown in the panel; the kernel must not die with the thread
            self.error = e
            self.status.value = f"error: {type(e).__name__}: {e}"
            logger.exception("training failed")
        finally:
            self.start_button.disabled, self.stop_button.disabled = False, True

    def on_stop(self) -> None:
        if self.trainer is not None and self.thread is not None and self.thread.is_alive():
            self.trainer.request_stop()
            self.status.value = "stopping: saving a checkpoint…"

    def wait(self, timeout: float | None = None) -> dict | None:
        if self.thread is not None:
            self.thread.join(timeout)
        return self.result
