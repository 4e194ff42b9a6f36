"""Optional experiment loggers (Weights & Biases, TensorBoard) as Trainer callbacks.

Neither is a dependency: when `use_wandb` / `use_tensorboard` is set and the package is missing, one
clear message says what to install and training goes on without it (metrics.jsonl is always written).
"""
from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from ..config import TrainConfig

logger = logging.getLogger(__name__)

_NUMERIC = (int, float)


def _scalars(rec: dict) -> dict[str, float]:
    return {k: float(v) for k, v in rec.items() if isinstance(v, _NUMERIC) and not isinstance(v, bool) and k != "step"}


class WandbLogger:
    def __init__(self, project: str, run_name: str = "", config: dict | None = None) -> None:
        self.project, self.run_name, self.config = project, run_name, config or {}
        self.run = None

    def on_train_begin(self, trainer) -> None:
        try:
            import wandb
        except ImportError:
            logger.warning("use_wandb=True but wandb is not installed: `pip install wandb` (continuing without it)")
            return
        self.run = wandb.init(project=self.project, name=self.run_name or None, config={**self.config, **trainer.config_dict()},
                              resume="allow")

    def on_log(self, trainer, rec: dict) -> None:
        if self.run is not None:
            self.run.log(_scalars(rec), step=int(rec.get("step", trainer.step)))

    def on_train_end(self, trainer, result: dict) -> None:
        if self.run is not None:
            self.run.summary.update({k: v for k, v in result.items() if isinstance(v, (int, float, str))})
            self.run.finish()
            self.run = None


class TensorBoardLogger:
    def __init__(self, log_dir: str | Path) -> None:
        self.log_dir = Path(log_dir)
        self.writer = None

    def on_train_begin(self, trainer) -> None:
        try:
            from torch.utils.tensorboard import SummaryWriter
        except ImportError:
            logger.warning("use_tensorboard=True but tensorboard is not installed: `pip install tensorboard` "
                           "(continuing without it)")
            return
        self.writer = SummaryWriter(str(self.log_dir))

    def on_log(self, trainer, rec: dict) -> None:
        if self.writer is not None:
            step = int(rec.get("step", trainer.step))
            for k, v in _scalars(rec).items():
                self.writer.add_scalar(k, v, step)

    def on_train_end(self, trainer, result: dict) -> None:
        if self.writer is not None:
            self.writer.close()
            self.writer = None


def optional_loggers(cfg: TrainConfig, output_dir: str | Path) -> list[Any]:
    """The experiment loggers cfg.logging asks for, as Trainer callbacks."""
    log = cfg.logging
    out: list[Any] = []
    if log.use_wandb:
        out.append(WandbLogger(log.wandb_project, log.wandb_run_name))
    if log.use_tensorboard:
        out.append(TensorBoardLogger(Path(output_dir) / "tensorboard"))
    return out
