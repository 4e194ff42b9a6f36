"""Alignment after SFT: preference pairs (pairs), their batches (data), the DPO/IPO loss and its metrics (dpo),
the cached reference log-probs (reference), SPIN pairs from the SFT model (spin), GRPO (grpo) and what notebooks
07-08 show (show).
The training glue is minigpt.train.dpo (DPOConfig, build_dpo_trainer, run_dpo)."""
from .dpo import LOSS_TYPES, dpo_losses
from .pairs import PairError, PairReport, PreferencePair, parse_pair, read_pairs

__all__ = ["LOSS_TYPES", "PairError", "PairReport", "PreferencePair", "dpo_losses", "parse_pair", "read_pairs"]
