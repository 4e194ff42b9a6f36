"""`python -m minigpt.serve CKPT`: serve a checkpoint with an OpenAI-compatible API.

    python -m minigpt.serve runs/default/sft/final_model                 # http://127.0.0.1:8000/v1
    python -m minigpt.serve CKPT --quantize int8 --max-batch 8 --api-key secret

SIGTERM or Ctrl+C: the server stops accepting connections, lets the requests in flight finish (up
to --shutdown-timeout seconds, then cancels them), stops the engine and exits with status 0.
"""
from __future__ import annotations

import argparse
import contextlib
import logging
import os
import signal
import sys
from typing import Iterator

logger = logging.getLogger(__name__)


def _parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="python -m minigpt.serve", description=__doc__.split("\n")[0])
    ap.add_argument("checkpoint", help="minigpt checkpoint folder, e.g. runs/default/sft/final_model")
    ap.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1: this machine only)")
    ap.add_argument("--port", type=int, default=8000)
    ap.add_argument("--quantize", choices=["int8"], default=None, help="int8 weights for every token")
    ap.add_argument("--max-batch", type=int, default=8, help="rows decoded together (default 8)")
    ap.add_argument("--max-queue", type=int, default=64,
                    help="requests that may wait for a row; past it the server answers 429 (default 64)")
    ap.add_argument("--api-key", default=os.environ.get("MINIGPT_API_KEY"),
                    help="require 'Authorization: Bearer KEY' on every endpoint but /health "
                         "(default: $MINIGPT_API_KEY, else none)")
    ap.add_argument("--model-name", default="minigpt", help="the model id clients send and /v1/models lists")
    ap.add_argument("--decode-backend", default="auto", choices=["auto", "native", "model"])
    ap.add_argument("--shutdown-timeout", type=float, default=30.0,
                    help="seconds in-flight requests get to finish after SIGTERM (default 30)")
    ap.add_argument("--header-timeout", type=float, default=10.0,
                    help="seconds a client has to send a request's headers before its connection is closed (default 10)")
    ap.add_argument("--body-timeout", type=float, default=30.0,
                    help="seconds a client has to send a request's body once its headers are in (default 30)")
    ap.add_argument("--max-connections", type=int, default=128,
                    help="open connections past which new requests get 503 (default 128)")
    ap.add_argument("--log-level", default="info", choices=["debug", "info", "warning", "error"])
    return ap


def _server_class() -> type:
    import uvicorn

    class Server(uvicorn.Server):
        """uvicorn's server, except that a handled SIGTERM/SIGINT ends in a normal exit (status 0)
        instead of being raised again after the graceful shutdown."""

        @contextlib.contextmanager
        def capture_signals(self) -> Iterator[None]:
            handled = (signal.SIGINT, signal.SIGTERM)
            original = {sig: signal.signal(sig, self.handle_exit) for sig in handled}
            try:
                yield
            finally:
                for sig, handler in original.items():
                    signal.signal(sig, handler)

        def handle_exit(self, sig: int, frame: object) -> None:
            if not self.should_exit:
                logger.info("%s: finishing the requests in flight (at most %.0f s), then exiting",
                            signal.Signals(sig).name, self.config.timeout_graceful_shutdown or 0)
            super().handle_exit(sig, frame)

    return Server


def main(argv: list[str] | None = None) -> int:
    ap = _parser()
    args = ap.parse_args(argv)
    if args.api_key is not None and not args.api_key.strip():
        ap.error("--api-key (or $MINIGPT_API_KEY) is empty: no client could send it, so every request but "
                 "/health would get 401; give a key, or leave both unset to serve without one")
    logging.basicConfig(level=args.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        import uvicorn  # noqa: F401 (the serve extra is installed)

        from .app import create_app
        from .protocol import ServerLimits, server_config
    except ImportError as e:
        print(f"error: {e.name} is missing: install the serve extra (pip install -e '.[serve]')", file=sys.stderr)
        return 1
    from ..train.checkpoint import load_checkpoint
    from .engine import Engine

    try:
        limits = ServerLimits(header_timeout=args.header_timeout, body_timeout=args.body_timeout,
                              max_connections=args.max_connections)
        limits.check()
    except ValueError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    try:
        model, tokenizer, _ = load_checkpoint(args.checkpoint)
        engine = Engine(model, tokenizer, quantize=args.quantize, max_batch=args.max_batch,
                        max_queue=args.max_queue, decode_backend=args.decode_backend)
    except (OSError, ValueError, RuntimeError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    app = create_app(engine, model_name=args.model_name, api_key=args.api_key)
    config = server_config(app, args.host, args.port, limits, log_level=args.log_level,
                           timeout_graceful_shutdown=args.shutdown_timeout, access_log=False)
    logger.info("serving %s as %r on http://%s:%d/v1 (max batch %d, max queue %d%s)", args.checkpoint,
                args.model_name, args.host, args.port, args.max_batch, args.max_queue,
                ", API key required" if args.api_key else "")
    server = _server_class()(config)
    server.run()
    return 0 if server.started else 1
