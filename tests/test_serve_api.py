"""The OpenAI-compatible server, through the official `openai` client and raw HTTP, on 127.0.0.1:
chat and completions, streamed and not, stop strings, concurrency equal to one-by-one, a client that
disconnects mid-stream, every bad request, queue overflow and the API key."""
from __future__ import annotations

import json
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import pytest
import torch

openai = pytest.importorskip("openai")
httpx = pytest.importorskip("httpx")
pytest.importorskip("fastapi")

from minigpt.infer.config import GenerationConfig  # noqa: E402
from minigpt.infer.generate import TextGenerator  # noqa: E402
from minigpt.serve import Engine, create_app  # noqa: E402
from minigpt.serve.app import ThreadedServer  # noqa: E402
from conftest import tiny_gpt, tiny_tokenizer  # noqa: E402

pytestmark = pytest.mark.usefixtures("one_thread")

CHATS = [[{"role": "user", "content": "你好"}],
         [{"role": "system", "content": "你是助手。"}, {"role": "user", "content": "介绍一下长江"}],
         [{"role": "user", "content": "Hello, how are you today?"}],
         [{"role": "user", "content": "今天天气很好"}, {"role": "assistant", "content": "是的。"},
          {"role": "user", "content": "我们去公园散步"}]]
GREEDY = {"temperature": 0, "extra_body": {"ignore_eos": True}}


@pytest.fixture(scope="module")
def tok():
    return tiny_tokenizer()


@pytest.fixture(scope="module")
def model(tok):
    m = tiny_gpt(tok.vocab_size, d_model=48, max_seq_len=96)
    with torch.no_grad():  # peaked distributions: greedy paths are not ties
        for p in m.parameters():
            if p.dim() == 2:
                p.normal_(0, 0.3)
    return m


@pytest.fixture(scope="module")
def server(model, tok):
    with ThreadedServer(create_app(Engine(model, tok, max_batch=4, max_queue=8), model_name="tiny")) as s:
        yield s


@pytest.fixture(scope="module")
def client(server):
    return openai.OpenAI(base_url=server.url + "/v1", api_key="unused", max_retries=0, timeout=30)


def reference(model, tok, messages, n):
    """The reply TextGenerator gives for the same ChatML prompt, greedy."""
    cfg = GenerationConfig(max_new_tokens=n, do_sample=False, ignore_eos=True)
    return "".join(TextGenerator(model, tok).stream_ids(tok.apply_chat_template(messages, add_generation_prompt=True), cfg))


def test_models_and_health(client, server):
    assert [m.id for m in client.models.list().data] == ["tiny"]
    h = httpx.get(server.url + "/health").json()
    assert h["status"] == "ok" and h["running"] == 0 and h["max_batch"] == 4


def test_chat_whole_and_streamed(client, model, tok):
    r = client.chat.completions.create(model="tiny", messages=CHATS[1], max_tokens=12, **GREEDY)
    want = reference(model, tok, CHATS[1], 12)
    assert r.object == "chat.completion" and r.choices[0].message.role == "assistant"
    assert r.choices[0].message.content == want and r.choices[0].finish_reason == "length"
    n_prompt = len(tok.apply_chat_template(CHATS[1], add_generation_prompt=True))
    assert (r.usage.prompt_tokens, r.usage.completion_tokens, r.usage.total_tokens) == (n_prompt, 12, n_prompt + 12)
    chunks = list(client.chat.completions.create(model="tiny", messages=CHATS[1], max_tokens=12, stream=True,
                                                 stream_options={"include_usage": True}, **GREEDY))
    assert chunks[0].choices[0].delta.role == "assistant" and all(c.id == chunks[0].id for c in chunks)
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == want
    assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] == "length"
    assert chunks[-1].choices == [] and chunks[-1].usage.completion_tokens == 12


def test_completions_whole_and_streamed(client, model, tok):
    cfg = GenerationConfig(max_new_tokens=10, do_sample=False, ignore_eos=True)
    want = "".join(TextGenerator(model, tok).stream_ids(tok.encode("长江、黄河"), cfg))
    r = client.completions.create(model="tiny", prompt="长江、黄河", max_tokens=10, **GREEDY)
    assert r.object == "text_completion" and r.choices[0].text == want
    assert r.usage.prompt_tokens == len(tok.encode("长江、黄河"))
    chunks = list(client.completions.create(model="tiny", prompt="长江、黄河", max_tokens=10, stream=True, **GREEDY))
    assert "".join(c.choices[0].text for c in chunks) == want and chunks[-1].choices[0].finish_reason == "length"
    ids = client.completions.create(model="tiny", prompt=tok.encode("长江、黄河"), max_tokens=10, **GREEDY)
    assert ids.choices[0].text == want  # a prompt given as token ids


def test_sse_bytes_are_whole_utf8_events(server, model, tok):
    """Each event is one `data:` line of UTF-8 JSON, then [DONE]; the pieces join to exactly the text that
    TextGenerator decodes (bytes of one character across tokens become one character, never U+FFFD pairs)."""
    body = {"model": "tiny", "messages": CHATS[0], "max_tokens": 30, "stream": True, "temperature": 0,
            "ignore_eos": True}
    with httpx.stream("POST", server.url + "/v1/chat/completions", json=body, timeout=30) as r:
        assert r.headers["content-type"].startswith("text/event-stream")
        raw = b"".join(r.iter_raw())
    events = raw.decode("utf-8").split("\n\n")
    assert events[-1] == "" and events[-2] == "data: [DONE]"
    assert all(e.startswith("data: {") for e in events[:-2])
    pieces = [json.loads(e[6:])["choices"][0]["delta"].get("content", "") for e in events[:-2]]
    assert "".join(pieces) == reference(model, tok, CHATS[0], 30)


def test_stop_strings(client, model, tok):
    full = reference(model, tok, CHATS[2], 20)
    stop = full[6:8]
    r = client.chat.completions.create(model="tiny", messages=CHATS[2], max_tokens=20, stop=[stop, "never-seen"],
                                       **GREEDY)
    assert r.choices[0].message.content == full[:full.index(stop)] and r.choices[0].finish_reason == "stop"
    streamed = client.chat.completions.create(model="tiny", messages=CHATS[2], max_tokens=20, stop=stop, stream=True,
                                              **GREEDY)
    assert "".join(c.choices[0].delta.content or "" for c in streamed) == full[:full.index(stop)]


def test_end_of_turn_stops_with_reason_stop(client, tok):
    r = client.chat.completions.create(model="tiny", messages=CHATS[0], max_tokens=40, temperature=0,
                                       stop=["<|im_end|>"], extra_body={"ignore_eos": True})
    assert r.choices[0].finish_reason in ("stop", "length") and "<|im_end|>" not in r.choices[0].message.content


def test_concurrent_clients_equal_one_by_one(client):
    """8 clients at once (4 rows: others queue and join as rows free up) get exactly the one-by-one replies."""
    jobs = [(CHATS[k % 4], 8 + 5 * k, k % 2 == 0) for k in range(8)]

    def ask(job):
        messages, n, stream = job
        if stream:
            chunks = client.chat.completions.create(model="tiny", messages=messages, max_tokens=n, stream=True, **GREEDY)
            return "".join(c.choices[0].delta.content or "" for c in chunks)
        return client.chat.completions.create(model="tiny", messages=messages, max_tokens=n,
                                              **GREEDY).choices[0].message.content

    one_by_one = [ask(j) for j in jobs]
    with ThreadPoolExecutor(8) as pool:
        together = list(pool.map(ask, jobs))
    assert together == one_by_one


def test_seeded_sampling_is_reproducible(client):
    kw = dict(model="tiny", messages=CHATS[0], max_tokens=15, temperature=0.9, top_p=0.9, seed=3,
              extra_body={"ignore_eos": True})
    a, b = (client.chat.completions.create(**kw).choices[0].message.content for _ in range(2))
    assert a == b


def _wait(pred, seconds=10.0):
    deadline = time.monotonic() + seconds
    while not pred() and time.monotonic() < deadline:
        time.sleep(0.005)
    return pred()


def test_disconnect_mid_stream_frees_the_row(server, model):
    """A client that goes away mid-stream: its row leaves the batch while it had tokens left to make."""
    gate = threading.Event()
    seen = []

    def slow(*_):  # one forward at a time, paced by the test (returns None: inputs unchanged)
        seen.append(1)
        gate.wait(0.02)

    hook = model.layers[0].register_forward_pre_hook(slow)
    try:
        body = {"model": "tiny", "messages": CHATS[0], "max_tokens": 60, "stream": True, "temperature": 0,
                "ignore_eos": True}
        health = lambda: httpx.get(server.url + "/health").json()  # noqa: E731
        with httpx.stream("POST", server.url + "/v1/chat/completions", json=body, timeout=30) as r:
            chunks = r.iter_raw()  # kept: a dropped iterator would close the response itself
            next(chunks)
            assert health()["running"] == 1
        # 60 tokens at >= 20 ms a step would take over a second; the row leaves long before
        assert _wait(lambda: health()["running"] == 0, 1.0)
        assert len(seen) < 40
    finally:
        gate.set()
        hook.remove()


BAD = [
    (b"{not json", None, "not valid JSON"),
    (b"[1, 2]", None, "JSON object"),
    (json.dumps({"model": "tiny", "messages": "hi"}).encode(), "messages", "non-empty array"),
    (json.dumps({"model": "tiny", "messages": [{"role": "robot", "content": "hi"}]}).encode(), "messages[0].role",
     "unknown role"),
    (json.dumps({"model": "tiny", "messages": [{"role": "user", "content": 5}]}).encode(), "messages[0].content",
     "string"),
    (json.dumps({"model": "tiny", "messages": CHATS[0], "temperature": -0.5}).encode(), "temperature", "between"),
    (json.dumps({"model": "tiny", "messages": CHATS[0], "temperature": "hot"}).encode(), "temperature", "number"),
    (json.dumps({"model": "tiny", "messages": CHATS[0], "max_tokens": "10"}).encode(), "max_tokens", "integer"),
    (json.dumps({"model": "tiny", "messages": CHATS[0], "max_tokens": 0}).encode(), "max_tokens", "at least 1"),
    (json.dumps({"model": "tiny", "messages": CHATS[0], "top_p": 1.5}).encode(), "top_p", "between"),
    (json.dumps({"model": "tiny", "messages": CHATS[0], "stop": [1]}).encode(), "stop", "strings"),
    (json.dumps({"model": "tiny", "messages": CHATS[0], "n": 2}).encode(), "n", "must be 1"),
    (json.dumps({"model": "tiny", "messages": CHATS[0], "stream": "yes"}).encode(), "stream", "boolean"),
    (json.dumps({"model": "tiny", "messages": CHATS[0], "seed": 1.5}).encode(), "seed", "integer"),
    (json.dumps({"model": "tiny", "messages": [{"role": "user", "content": "长江" * 200}]}).encode(), "messages",
     "context"),
]


@pytest.mark.parametrize("body,param,words", BAD, ids=[b[1] or b[2] for b in BAD])
def test_bad_chat_requests(server, body, param, words):
    r = httpx.post(server.url + "/v1/chat/completions", content=body, headers={"content-type": "application/json"})
    assert r.status_code == 400, r.text
    err = r.json()["error"]
    assert err["param"] == param and words in err["message"] and err["type"] == "invalid_request_error"


def test_bad_completion_requests_and_unknown_model(client, server):
    with pytest.raises(openai.BadRequestError) as e:
        client.completions.create(model="tiny", prompt=[10 ** 6])
    assert e.value.body["param"] == "prompt" and "vocabulary" in e.value.body["message"]
    with pytest.raises(openai.BadRequestError) as e:
        client.completions.create(model="tiny", prompt="长江" * 200)
    assert e.value.body["code"] == "context_length_exceeded"
    with pytest.raises(openai.NotFoundError) as e:
        client.chat.completions.create(model="gpt-4", messages=CHATS[0])
    assert e.value.body["code"] == "model_not_found"
    r = httpx.get(server.url + "/v2/nothing")
    assert r.status_code == 404 and "error" in r.json()


def test_queue_overflow_answers_429(model, tok):
    """With the engine held mid-prefill, max_queue requests wait; the next one is refused at once."""
    gate = threading.Event()

    def hold(*_):
        gate.wait(20)

    hook = model.layers[0].register_forward_pre_hook(hold)
    engine = Engine(model, tok, max_batch=1, max_queue=2)
    try:
        with ThreadedServer(create_app(engine, model_name="tiny")) as s:
            c = openai.OpenAI(base_url=s.url + "/v1", api_key="-", max_retries=0, timeout=30)
            ask = lambda: c.chat.completions.create(model="tiny", messages=CHATS[0], max_tokens=4)  # noqa: E731
            with ThreadPoolExecutor(3) as pool:
                running = pool.submit(ask)
                assert _wait(lambda: engine.stats()["running"] + engine.stats()["waiting"] == 1)
                assert _wait(lambda: engine.stats()["waiting"] == 0)  # taken by the engine, held in its prefill
                queued = [pool.submit(ask) for _ in range(2)]
                assert _wait(lambda: engine.stats()["waiting"] == 2)
                with pytest.raises(openai.RateLimitError) as e:
                    ask()
                assert e.value.status_code == 429 and e.value.body["code"] == "queue_full"
                assert e.value.response.headers["retry-after"] == "1"
                gate.set()
                assert all(f.result().choices[0].finish_reason for f in [running, *queued])
    finally:
        gate.set()
        hook.remove()


def test_api_key(model, tok):
    with ThreadedServer(create_app(Engine(model, tok), model_name="tiny", api_key="s3cret")) as s:
        assert httpx.get(s.url + "/health").status_code == 200  # open to health checks
        for headers in ({}, {"Authorization": "Bearer wrong"}):
            r = httpx.get(s.url + "/v1/models", headers=headers)
            assert r.status_code == 401 and r.json()["error"]["code"] == "invalid_api_key"
        with pytest.raises(openai.AuthenticationError):
            openai.OpenAI(base_url=s.url + "/v1", api_key="wrong", max_retries=0).models.list()
        ok = openai.OpenAI(base_url=s.url + "/v1", api_key="s3cret", max_retries=0)
        assert ok.chat.completions.create(model="tiny", messages=CHATS[0], max_tokens=3).choices[0].finish_reason
