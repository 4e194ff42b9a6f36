"""Serving speed: 8 concurrent streaming clients against `python -m minigpt.serve` (continuous batching),
one client alone against the same server, and 8 clients against a baseline server that calls
`transformers` `generate` once per request (one at a time) on the same exported model.

Each server runs in its own process; the clients (asyncio + httpx, in the bench process) stream
/v1/completions greedily with `ignore_eos`, so every request makes exactly `new_tokens` tokens.
Reported per case: aggregate generated tokens/s (all tokens / wall time), time to first token (p50),
inter-chunk latency p50/p99 and the error count. Only 127.0.0.1 is contacted; every loop is bounded.

    python -m minigpt.bench.serve baseline HF_DIR --port 8001   # the baseline server on its own
"""
from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any


PROMPTS = ["长江、黄河", "今天天气很好，", "中国的首都是", "人工智能", "Hello, how are", "我喜欢读书", "新华社记者", "经济发展"]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _percentile(values: list[float], q: float) -> float:
    if not values:
        return 0.0
    v = sorted(values)
    return v[min(len(v) - 1, int(round(q * (len(v) - 1))))]


async def _one(client: Any, url: str, prompt: str, new_tokens: int) -> dict[str, Any]:
    """One streamed request: arrival times of its content chunks and its token count (from usage)."""
    body = {"model": "minigpt", "prompt": prompt, "max_tokens": new_tokens, "temperature": 0, "stream": True,
            "ignore_eos": True, "stream_options": {"include_usage": True}}
    t0, times, tokens = time.perf_counter(), [], 0
    async with client.stream("POST", url + "/v1/completions", json=body) as r:
        if r.status_code != 200:
            return {"error": f"HTTP {r.status_code}"}
        async for line in r.aiter_lines():
            if not line.startswith("data: {"):
                continue
            chunk = json.loads(line[6:])
            if chunk.get("usage"):
                tokens = chunk["usage"]["completion_tokens"]
            elif chunk["choices"] and chunk["choices"][0]["text"]:
                times.append(time.perf_counter() - t0)
    return {"ttft": times[0] if times else None, "gaps": [b - a for a, b in zip(times, times[1:])], "tokens": tokens}


async def _clients(url: str, clients: int, requests: int, new_tokens: int) -> dict[str, Any]:
    """`requests` streamed requests, at most `clients` at a time; aggregate tokens/s and latencies."""
    import httpx

    sem = asyncio.Semaphore(clients)
    async with httpx.AsyncClient(timeout=300) as client:
        async def run(k: int) -> dict[str, Any]:
            async with sem:
                try:
                    return await _one(client, url, PROMPTS[k % len(PROMPTS)], new_tokens)
                except Exception as e:  # counted as an error, the bench goes on
                    return {"error": repr(e)}

        await _one(client, url, PROMPTS[0], 4)  # warm-up (first-call costs, building the C step)
        t0 = time.perf_counter()
        results = await asyncio.gather(*(run(k) for k in range(requests)))
        wall = time.perf_counter() - t0
    ok = [r for r in results if "error" not in r]
    errors = [r["error"] for r in results if "error" in r] + [
        f"{r['tokens']} tokens" for r in ok if r["tokens"] != new_tokens]
    gaps = [g for r in ok for g in r["gaps"]]
    return {"clients": clients, "requests": requests, "tokens": sum(r["tokens"] for r in ok), "seconds": wall,
            "tokens_per_s": sum(r["tokens"] for r in ok) / wall, "errors": len(errors), "error_examples": errors[:3],
            "ttft_p50_ms": 1000 * _percentile([r["ttft"] for r in ok if r["ttft"] is not None], 0.5),
            "itl_p50_ms": 1000 * _percentile(gaps, 0.5), "itl_p99_ms": 1000 * _percentile(gaps, 0.99)}


class _Process:
    """A server subprocess on 127.0.0.1, waited for on /health, stopped with SIGTERM."""

    def __init__(self, args: list[str]) -> None:
        self.port = _free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.proc = subprocess.Popen([sys.executable, "-m", *args, "--port", str(self.port)], stdout=subprocess.PIPE,
                                     stderr=subprocess.STDOUT, text=True, start_new_session=True)

    def __enter__(self) -> "_Process":
        import httpx

        deadline = time.monotonic() + 120
        while time.monotonic() < deadline and self.proc.poll() is None:
            try:
                if httpx.get(self.url + "/health", timeout=1).status_code == 200:
                    return self
            except httpx.TransportError:
                time.sleep(0.2)
        self.__exit__()
        raise RuntimeError(f"server {self.proc.args} did not start: {self.proc.communicate()[0][-2000:]}")

    def __exit__(self, *exc: object) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.communicate(timeout=60)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.communicate()


def bench_serving(preset: str = "tiny", clients: int = 8, new_tokens: int = 64, rounds: int = 2) -> dict[str, Any]:
    """The three cases on one randomly initialised `preset` model (checkpoint and its HF export)."""
    import importlib.util

    import torch

    from ..config import ModelConfig
    from ..data.tokenizer import TokenizerConfig, train_tokenizer
    from ..infer.export import export_hf
    from ..model.gpt import GPT
    from ..train.checkpoint import save_checkpoint
    from .text import builtin_texts

    requests = clients * rounds
    out: dict[str, Any] = {"preset": preset, "clients": clients, "new_tokens": new_tokens, "requests": requests}
    with tempfile.TemporaryDirectory() as tmp:
        tok = train_tokenizer(builtin_texts(2000), TokenizerConfig(tokenizer_vocab_size=6400, min_frequency=2))
        tok.save(Path(tmp) / "tok")
        torch.manual_seed(0)
        cfg = ModelConfig.from_preset(preset, vocab_size=tok.vocab_size)
        ck = save_checkpoint(Path(tmp) / "ckpt", GPT(cfg).eval(), {"model": cfg.to_dict(), "tokenizer_sha256": tok.sha256},
                             tokenizer_dir=Path(tmp) / "tok")
        with _Process(["minigpt.serve", str(ck), "--max-batch", str(clients), "--log-level", "warning"]) as srv:
            out["minigpt"] = asyncio.run(_clients(srv.url, clients, requests, new_tokens))
            out["minigpt_alone"] = asyncio.run(_clients(srv.url, 1, rounds, new_tokens))
        if importlib.util.find_spec("transformers") is not None:
            hf_dir = export_hf(ck, Path(tmp) / "hf")
            with _Process(["minigpt.bench.serve", "baseline", str(hf_dir)]) as srv:
                out["hf"] = asyncio.run(_clients(srv.url, clients, requests, new_tokens))
    m = out["minigpt"]["tokens_per_s"]
    out["vs_alone"] = m / out["minigpt_alone"]["tokens_per_s"]
    if "hf" in out:
        out["vs_hf"] = m / out["hf"]["tokens_per_s"]
    return out


# --------------------------------------------------------------------------- the baseline server


def baseline_app(hf_dir: str | Path) -> Any:
    """A Starlette app streaming /v1/completions from `transformers` `generate`, one request at a time."""
    import torch
    from starlette.applications import Starlette
    from starlette.responses import JSONResponse, StreamingResponse
    from starlette.routing import Route
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from transformers.generation.streamers import BaseStreamer

    model = AutoModelForCausalLM.from_pretrained(str(hf_dir), dtype=torch.float32).eval()
    tok = AutoTokenizer.from_pretrained(str(hf_dir))
    lock = threading.Lock()  # generate per request: requests wait for the one running

    class Tokens(BaseStreamer):
        """Hands each new token to the event loop (the first put is the prompt)."""

        def __init__(self, loop: asyncio.AbstractEventLoop, queue: asyncio.Queue) -> None:
            self.loop, self.queue, self.prompt_seen = loop, queue, False

        def put(self, value: Any) -> None:
            if not self.prompt_seen:
                self.prompt_seen = True
                return
            for t in value.reshape(-1).tolist():
                self.loop.call_soon_threadsafe(self.queue.put_nowait, t)

        def end(self) -> None:
            self.loop.call_soon_threadsafe(self.queue.put_nowait, None)

    def generate(ids: list[int], n: int, streamer: Tokens) -> None:
        x = torch.tensor([ids])
        with lock, torch.inference_mode():
            model.generate(x, attention_mask=torch.ones_like(x), do_sample=False, max_new_tokens=n, min_new_tokens=n,
                           pad_token_id=3, streamer=streamer)

    async def health(_: Any) -> JSONResponse:
        return JSONResponse({"status": "ok"})

    async def completions(http: Any) -> StreamingResponse:
        body = await http.json()
        ids, n = tok.encode(body["prompt"], add_special_tokens=False), int(body.get("max_tokens", 16))
        queue: asyncio.Queue = asyncio.Queue()
        worker = threading.Thread(target=generate, args=(ids, n, Tokens(asyncio.get_running_loop(), queue)), daemon=True)
        worker.start()

        async def events() -> Any:
            count = 0
            while (t := await queue.get()) is not None:
                count += 1
                yield f"data: {json.dumps({'choices': [{'text': tok.decode([t]), 'index': 0}]})}\n\n"
            yield f"data: {json.dumps({'choices': [], 'usage': {'completion_tokens': count}})}\n\ndata: [DONE]\n\n"

        return StreamingResponse(events(), media_type="text/event-stream")

    return Starlette(routes=[Route("/health", health), Route("/v1/completions", completions, methods=["POST"])])


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m minigpt.bench.serve", description=__doc__.split("\n")[0])
    ap.add_argument("kind", choices=["baseline"])
    ap.add_argument("hf_dir")
    ap.add_argument("--port", type=int, default=8001)
    args = ap.parse_args(argv)
    import uvicorn

    uvicorn.run(baseline_app(args.hf_dir), host="127.0.0.1", port=args.port, log_level="warning")
    return 0


if __name__ == "__main__":
    sys.exit(main())
