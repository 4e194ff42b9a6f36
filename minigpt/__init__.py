"""minigpt: train small GPT language models from scratch, Jupyter-first."""
from .config import ModelConfig, TrainConfig
from .model import GPT

__all__ = ["ModelConfig", "TrainConfig", "GPT"]
__version__ = "0.1.0"
