"""Continuous batching: rows joining a running batch (infer.decode.join/realign) and the serving Engine
decode exactly as each request alone (greedy), with per-request sampling, stops and cancellation."""
from __future__ import annotations

import threading
import time

import pytest
import torch

from minigpt.infer.config import GenerationConfig
from minigpt.infer.decode import join, prefill, realign, step
from minigpt.infer.generate import TextGenerator
from minigpt.infer.native_decode import NativeDecoder, load_library
from minigpt.serve.engine import Engine, Event, QueueFull, Request
from conftest import tiny_gpt, tiny_tokenizer

pytestmark = pytest.mark.usefixtures("one_thread")

PROMPTS = ["长江、黄河是中国的两条大河。", "你好", "Hello, how are you today?", "今天天气很好，我们去公园散步。人工智能",
           "中国", "我喜欢读书"]
BACKENDS = ["model"] + (["native"] if load_library() is not None else [])


@pytest.fixture(scope="module")
def tok():
    return tiny_tokenizer()


@pytest.fixture(scope="module")
def model(tok):
    m = tiny_gpt(tok.vocab_size, d_model=48, n_heads=4, n_kv_heads=2, max_seq_len=96)
    with torch.no_grad():  # wider weights than init: peaked distributions, so greedy paths are not ties
        for p in m.parameters():
            if p.dim() == 2:
                p.normal_(0, 0.3)
    return m


def greedy(cfg_tokens: int = 20, **kw) -> GenerationConfig:
    return GenerationConfig(max_new_tokens=cfg_tokens, do_sample=False, ignore_eos=True, top_k=0, top_p=1.0, **kw)


def alone(model, tok, ids, n, backend="model"):
    return TextGenerator(model, tok, decode_backend=backend, valid_utf8=False).generate_ids(ids, greedy(n))


def _argmax(logits):
    return logits.argmax(-1).tolist()


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("a_steps,b_prompt", [(3, 1), (12, 0), (0, 3)])  # B shorter / longer than A's slots
def test_joined_row_decodes_as_alone(model, tok, backend, a_steps, b_prompt):
    native = NativeDecoder(model) if backend == "native" else None
    a_ids, b_ids, n = tok.encode(PROMPTS[0]), tok.encode(PROMPTS[b_prompt]), 16
    with torch.inference_mode():
        logits, cache, batch = prefill(model, [a_ids], 3, 0)
        cache = realign(cache, batch, cache.length, cache.length + a_steps + n + 4)
        a_out = _argmax(logits)
        for _ in range(a_steps):
            a_out += _argmax(step(model, native, [a_out[-1]], cache, batch))
        lb, cb, bb = prefill(model, [b_ids], 3, 0)
        b_out = _argmax(lb)
        cache, batch = join((cache, batch), (cb, bb), n + 4)
        assert min(batch.pads) == 0 and cache.length == max(len(a_ids) + a_steps, len(b_ids))
        for _ in range(n - 1):
            a_tok, b_tok = _argmax(step(model, native, [a_out[-1], b_out[-1]], cache, batch))
            a_out.append(a_tok)
            b_out.append(b_tok)
    assert a_out == alone(model, tok, a_ids, len(a_out), backend)
    assert b_out == alone(model, tok, b_ids, len(b_out), backend)


def test_realign_refuses_to_drop_real_slots(model, tok):
    with torch.inference_mode():
        _, cache, batch = prefill(model, [tok.encode("你好"), tok.encode(PROMPTS[0])], 3, 0)
    with pytest.raises(ValueError, match="cannot move"):
        realign(cache, batch, cache.length - 1, cache.capacity)  # the longer row has no padding to drop
    with pytest.raises(ValueError, match="cannot move"):
        realign(cache, batch, cache.length, cache.length - 1)  # fewer slots than filled


class Collect:
    """A sink that records events (on the engine thread) and signals the end."""

    def __init__(self) -> None:
        self.events: list[Event] = []
        self.done = threading.Event()
        self.then = lambda ev: None

    def __call__(self, ev: Event) -> None:
        self.events.append(ev)
        self.then(ev)
        if ev.finish:
            self.done.set()

    @property
    def text(self) -> str:
        return "".join(e.text for e in self.events)


def submit(engine, ids, cfg):
    sink = Collect()
    req = Request(list(ids), cfg, sink)
    engine.submit(req)
    return req, sink


@pytest.mark.parametrize("backend", BACKENDS)
def test_engine_staggered_requests_equal_alone(model, tok, backend):
    """Requests arriving while others decode join the batch; each text equals the request run alone.

    Each request is submitted from the previous one's sink at its first text (on the engine thread),
    so it always arrives mid-decode, whatever the speed of the machine."""
    engine = Engine(model, tok, max_batch=4, decode_backend=backend).start()
    gen = TextGenerator(model, tok, decode_backend=backend)
    budgets = [24 + 3 * k for k in range(len(PROMPTS))]  # 6 requests, 4 rows: the last wait for rows to leave
    sinks = [Collect() for _ in PROMPTS]

    def chain(k):
        def next_request(ev):
            if k + 1 < len(PROMPTS) and len(sinks[k].events) == 1:
                engine.submit(Request(tok.encode(PROMPTS[k + 1]), greedy(budgets[k + 1]), sinks[k + 1]))
        return next_request

    for k, s in enumerate(sinks):
        s.then = chain(k)
    try:
        engine.submit(Request(tok.encode(PROMPTS[0]), greedy(budgets[0]), sinks[0]))
        for s in sinks:
            assert s.done.wait(30)
        for p, n, s in zip(PROMPTS, budgets, sinks):
            assert s.text == "".join(gen.stream_ids(tok.encode(p), greedy(n))), p
            assert s.events[-1].finish == "length" and s.events[-1].completion_tokens == n
        assert engine.max_rows_seen == 4 and engine.stats()["running"] == 0
    finally:
        engine.close()


def test_engine_sampling_is_per_request_and_seeded(model, tok):
    """A seeded sampled request gives the same text alone and beside other requests."""
    engine = Engine(model, tok, max_batch=4).start()
    cfg = GenerationConfig(max_new_tokens=12, temperature=0.9, top_k=0, top_p=0.95, seed=7, ignore_eos=True)
    try:
        _, solo = submit(engine, tok.encode("你好"), cfg)
        assert solo.done.wait(30)
        others = [submit(engine, tok.encode(p), greedy(20))[1] for p in PROMPTS[:2]]
        _, mixed = submit(engine, tok.encode("你好"), cfg)
        assert mixed.done.wait(30) and all(s.done.wait(30) for s in others)
        assert mixed.text == solo.text and len(solo.events) > 1
    finally:
        engine.close()


def test_engine_stops_and_cancel(model, tok):
    engine = Engine(model, tok, max_batch=2, max_queue=1).start()
    try:
        ids = tok.encode(PROMPTS[0])
        text = "".join(TextGenerator(model, tok).stream_ids(ids, greedy(20)))
        stop = text[5:7]
        _, s = submit(engine, ids, greedy(20, stop_strings=[stop]))
        assert s.done.wait(30)
        assert s.text == text[:text.index(stop)] and s.events[-1].finish == "stop"
        # cancel: a long request leaves the batch at the next step, its sink hears nothing more
        req, s = submit(engine, ids, greedy(60))
        while not s.events:
            time.sleep(0.001)
        req.cancel()
        deadline = time.time() + 10
        while engine.stats()["running"] and time.time() < deadline:
            time.sleep(0.001)
        assert engine.stats()["running"] == 0 and not s.done.is_set()
    finally:
        engine.close()


def test_engine_queue_bound_and_close(model, tok):
    gate = threading.Event()

    def hold(*_):  # holds the engine inside its prefill until the test lets go (returns None: inputs unchanged)
        gate.wait(10)

    hook = model.layers[0].register_forward_pre_hook(hold)
    engine = Engine(model, tok, max_batch=1, max_queue=1).start()
    try:
        _, first = submit(engine, tok.encode("你好"), greedy(5))
        while engine.stats()["waiting"]:  # the engine took it and is held in its prefill
            time.sleep(0.001)
        _, second = submit(engine, tok.encode("中国"), greedy(5))
        with pytest.raises(QueueFull):
            submit(engine, tok.encode("长江"), greedy(5))
        gate.set()
        assert first.done.wait(30) and second.done.wait(30)
        assert first.events[-1].finish == second.events[-1].finish == "length"
    finally:
        gate.set()
        hook.remove()
        engine.close()
    with pytest.raises(RuntimeError, match="shutting down"):
        engine.submit(Request([1], greedy(2), Collect()))


def test_engine_int8_equals_text_generator_int8(model, tok):
    engine = Engine(model, tok, quantize="int8", max_batch=4).start()
    gen = TextGenerator(model, tok, quantize="int8")
    try:
        sinks = [submit(engine, tok.encode(p), greedy(12))[1] for p in PROMPTS[:4]]
        assert all(s.done.wait(30) for s in sinks)
        for p, s in zip(PROMPTS, sinks):
            assert s.text == "".join(gen.stream_ids(tok.encode(p), greedy(12))), p
    finally:
        engine.close()
