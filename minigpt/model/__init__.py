"""The model: the reference decoder (`gpt`), its speed paths (each parity-tested against it) and LoRA."""
from .gpt import GPT, KVCache

__all__ = ["GPT", "KVCache"]
