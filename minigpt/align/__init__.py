"""Alignment after SFT: preference pairs (pairs), their batches (data), the DPO/IPO loss (loss), the cached
reference log-probs (reference), SPIN pairs from the SFT model (spin), metrics and what notebook 07 shows (show).
The training glue is minigpt.train.dpo (DPOConfig, build_dpo_trainer, run_dpo)."""
from .loss import LOSS_TYPES, dpo_losses
from .pairs import PairError, PairReport, PreferencePair, parse_pair, read_pairs

__all__ = ["LOSS_TYPES", "PairError", "PairReport", "PreferencePair", "dpo_losses", "parse_pair", "read_pairs"]
