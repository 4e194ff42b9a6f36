"""TokenizerConfig: the tokenizer parameters of notebook 02 and their validation."""

from __future__ import annotations

from dataclasses import dataclass

from .special import MIN_VOCAB_SIZE, NUM_BYTES, SPECIAL_TOKENS


@dataclass
class TokenizerConfig:
    """Parameters of notebook 02 (tokenizer part).

    tokenizer_samples: how many documents to train on; 0 means all train documents
    (plus all SFT conversations when ``sft.jsonl`` exists). A positive value draws that many
    documents uniformly (seed 0) from train + SFT, so the sample is not just the first file lines.

    tokenizer_train_mb: at most about this many MB of train + SFT text to train on (default 100; 0 = all).
    A larger corpus is sampled line by line by a hash of the line's bytes, so the sample is spread over the
    whole file and the same for the same data; BPE training memory grows with the text it sees, and 100 MB
    gives the same merges at a 6400 vocabulary as far more would. Applies together with ``tokenizer_samples``.
    """

    tokenizer_vocab_size: int = 6400
    tokenizer_samples: int = 0
    tokenizer_train_mb: float = 100.0
    min_frequency: int = 2
    retrain_tokenizer: bool = False
    # learn no merge that joins two digits, so numbers encode one token per digit (see training.train_tokenizer)
    split_digits: bool = True

    def validate(self) -> None:
        v = self.tokenizer_vocab_size
        if not isinstance(v, int) or isinstance(v, bool):
            raise ValueError(f"tokenizer_vocab_size: expected an int, got {v!r}")
        if v < MIN_VOCAB_SIZE:
            raise ValueError(
                f"tokenizer_vocab_size={v} is too small: a byte-level BPE needs the {NUM_BYTES} byte "
                f"tokens plus {len(SPECIAL_TOKENS)} special tokens = {MIN_VOCAB_SIZE}; "
                f"use at least {MIN_VOCAB_SIZE} (default 6400)"
            )
        if v > 2**32 - 1:
            raise ValueError(f"tokenizer_vocab_size={v} is too large: expected at most 2**32-1")
        s = self.tokenizer_samples
        if not isinstance(s, int) or isinstance(s, bool) or s < 0:
            raise ValueError(f"tokenizer_samples: expected an int >= 0 (0 = all documents), got {s!r}")
        mb = self.tokenizer_train_mb
        if not isinstance(mb, (int, float)) or isinstance(mb, bool) or mb < 0:
            raise ValueError(f"tokenizer_train_mb: expected a number of MB >= 0 (0 = all the text), got {mb!r}")
        m = self.min_frequency
        if not isinstance(m, int) or isinstance(m, bool) or m < 1:
            raise ValueError(f"min_frequency: expected an int >= 1, got {m!r}")
        if not isinstance(self.split_digits, bool):
            raise ValueError(f"split_digits: expected true/false, got {self.split_digits!r}")
        if not isinstance(self.retrain_tokenizer, bool):
            raise ValueError(f"retrain_tokenizer: expected true/false, got {self.retrain_tokenizer!r}")

