"""Inference: sampling, decoding (PyTorch step, native C step, int8), `TextGenerator` and chat, evaluation, export."""
