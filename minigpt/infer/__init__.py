"""Inference: sampling, the decode loop (the model's forward, or the C step on a CPU; int8), `TextGenerator` and chat, evaluation, export."""
