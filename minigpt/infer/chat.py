"""Interactive chat in the terminal with a minigpt checkpoint.

    python -m minigpt.infer.chat runs/demo/sft/final_model [--temperature 0.7 --max_new_tokens 200]

Type a message and press Enter. `clear` forgets the history; `exit`, `quit` or `q` (or Ctrl-D) leaves.
"""
from __future__ import annotations

import argparse
import logging
import sys

from .generate import ChatSession, GenerationConfig, TextGenerator

EXIT_WORDS = {"exit", "quit", "q"}
RULE = "=" * 80


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="python -m minigpt.infer.chat", description="Chat with a minigpt checkpoint.")
    ap.add_argument("checkpoint", help="checkpoint folder, e.g. runs/demo/sft/final_model")
    d = GenerationConfig()
    ap.add_argument("--max_new_tokens", type=int, default=200)
    ap.add_argument("--temperature", type=float, default=d.temperature)
    ap.add_argument("--top_k", type=int, default=d.top_k)
    ap.add_argument("--top_p", type=float, default=d.top_p)
    ap.add_argument("--repetition_penalty", type=float, default=1.1)
    ap.add_argument("--no_repeat_ngram_size", type=int, default=0)
    ap.add_argument("--greedy", action="store_true", help="greedy decoding (most likely token each step)")
    ap.add_argument("--seed", type=int, default=None)
    ap.add_argument("--system", default="", help="an optional system message")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--quantize", default=None, choices=["int8"], help="int8 weights for the decode steps (faster on a CPU)")
    ap.add_argument("--decode_backend", default="auto", choices=["auto", "native", "model"],
                    help="auto: the C decode step on a CPU when it builds, else the model's forward (model; torch = model)")
    ap.add_argument("--no_stream", action="store_true", help="print each reply when complete")
    return ap


def run(gen: TextGenerator, cfg: GenerationConfig, system: str = "", stream: bool = True,
        read=input, write=None) -> int:
    """The read-eval-print loop; `read`/`write` are injectable for tests."""
    write = write or (lambda s: (sys.stdout.write(s), sys.stdout.flush()))
    session = ChatSession(gen, cfg, system=system)
    write(f"🤖 交互式对话模式 (interactive chat)\n{RULE}\n输入 'exit'、'quit' 或 'q' 退出\n输入 'clear' 清空对话历史\n{RULE}\n")
    while True:
        try:
            text = read("\n👤 用户: ")
        except (EOFError, KeyboardInterrupt):
            write("\n")
            break
        text = text.strip()
        if not text:
            continue
        if text.lower() in EXIT_WORDS:
            break
        if text.lower() == "clear":
            session.clear()
            write("🧹 对话历史已清空 (history cleared)\n")
            continue
        write("🤖 助手: ")
        if stream:
            session.send(text, callback=write)
        else:
            write(session.send(text))
        write("\n")
    write("👋 再见！\n")
    return 0


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(message)s")
    try:
        cfg = GenerationConfig(
            max_new_tokens=args.max_new_tokens, temperature=args.temperature, top_k=args.top_k, top_p=args.top_p,
            do_sample=not args.greedy, repetition_penalty=args.repetition_penalty,
            no_repeat_ngram_size=args.no_repeat_ngram_size, seed=args.seed,
        )
        gen = TextGenerator.from_checkpoint(args.checkpoint, device=args.device, quantize=args.quantize,
                                             decode_backend=args.decode_backend)
    except (OSError, ValueError, RuntimeError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    return run(gen, cfg, system=args.system, stream=not args.no_stream)


if __name__ == "__main__":
    sys.exit(main())
