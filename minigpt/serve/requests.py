"""Reading request bodies: JSON in, a prompt's token ids and a `GenerationConfig` out, or an `APIError`
naming the field.

Fields follow OpenAI's chat and completions APIs (n=1). Extensions, sent by the `openai` client in
`extra_body`: `top_k`, `repetition_penalty`, `ignore_eos`. `presence_penalty` and `frequency_penalty`
are accepted (front-ends send them) and not applied. A `max_tokens` beyond the context is cut to what
fits (finish_reason "length"); a prompt that leaves no room is refused.
"""
from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from typing import Any, Callable

from ..infer.config import SEED_MAX, GenerationConfig
from .responses import APIError, bad_request

logger = logging.getLogger(__name__)

ROLES = {"system": "system", "developer": "system", "user": "user", "assistant": "assistant"}
MAX_STOP = 4


@dataclass
class Job:
    """What one request asks the engine for."""

    kind: str  # "chat" or "completion"
    prompt_ids: list[int]
    config: GenerationConfig
    stream: bool
    include_usage: bool
    model: str | None


def load_json(raw: bytes) -> dict[str, Any]:
    """The body as a JSON object; 400 saying where the JSON breaks otherwise."""
    try:
        body = json.loads(raw.decode("utf-8"))
    except UnicodeDecodeError as e:
        raise bad_request(None, f"the request body is not UTF-8 (byte {e.start})") from None
    except json.JSONDecodeError as e:
        raise bad_request(None, f"the request body is not valid JSON: {e.msg} at line {e.lineno} column {e.colno}"
                          ) from None
    if not isinstance(body, dict):
        raise bad_request(None, f"the request body must be a JSON object, got {type(body).__name__}")
    return body


def _type_name(v: Any) -> str:
    return {dict: "object", list: "array", str: "string", bool: "boolean", type(None): "null"}.get(type(v), type(v).__name__)


def _number(body: dict, key: str, default: float, lo: float, hi: float) -> float:
    v = body.get(key)
    if v is None:
        return default
    if isinstance(v, bool) or not isinstance(v, (int, float)):
        raise bad_request(key, f"'{key}' must be a number, got {_type_name(v)}")
    if not lo <= v <= hi:
        raise bad_request(key, f"'{key}' must be between {lo} and {hi}, got {v}")
    return float(v)


def _integer(body: dict, key: str, lo: int) -> int | None:
    v = body.get(key)
    if v is None:
        return None
    if isinstance(v, bool) or not isinstance(v, int):
        raise bad_request(key, f"'{key}' must be an integer, got {_type_name(v)}")
    if v < lo:
        raise bad_request(key, f"'{key}' must be at least {lo}, got {v}")
    return v


def _boolean(body: dict, key: str, default: bool = False) -> bool:
    v = body.get(key, default)
    if v is None:
        return default
    if not isinstance(v, bool):
        raise bad_request(key, f"'{key}' must be a boolean, got {_type_name(v)}")
    return v


def _stop(body: dict) -> list[str]:
    v = body.get("stop")
    if v is None:
        return []
    stops = [v] if isinstance(v, str) else v
    if not isinstance(stops, list) or not all(isinstance(s, str) for s in stops):
        raise bad_request("stop", f"'stop' must be a string or an array of strings, got {_type_name(v)}")
    if len(stops) > MAX_STOP:
        raise bad_request("stop", f"'stop' takes at most {MAX_STOP} strings, got {len(stops)}")
    return [s for s in stops if s]


def _unsupported(body: dict) -> None:
    if body.get("n", 1) != 1:
        raise bad_request("n", f"'n' must be 1 (one choice per request), got {body.get('n')!r}")
    if body.get("logprobs") not in (None, False):
        raise bad_request("logprobs", "'logprobs' is not supported")
    if body.get("echo") not in (None, False):
        raise bad_request("echo", "'echo' is not supported")
    for key in ("presence_penalty", "frequency_penalty"):
        _number(body, key, 0.0, -2.0, 2.0)


def _generation(body: dict, n_prompt: int, context: int) -> GenerationConfig:
    """Sampling and stopping fields -> GenerationConfig, max_tokens cut to the room the prompt leaves."""
    _unsupported(body)
    temperature = _number(body, "temperature", 1.0, 0.0, 2.0)
    top_p = _number(body, "top_p", 1.0, 0.0, 1.0)
    key = "max_completion_tokens" if body.get("max_completion_tokens") is not None else "max_tokens"
    max_tokens = _integer(body, key, 1)
    room = context - n_prompt
    penalty = _number(body, "repetition_penalty", 1.0, 1e-6, 100.0)
    seed = body.get("seed")
    if seed is not None and (isinstance(seed, bool) or not isinstance(seed, int)):
        raise bad_request("seed", f"'seed' must be an integer, got {_type_name(seed)}")
    if seed is not None and not 0 <= seed <= SEED_MAX:
        raise bad_request("seed", f"'seed' must be between 0 and {SEED_MAX} (2**63-1), got {seed}")
    top_k, stop, ignore_eos = _integer(body, "top_k", 0) or 0, _stop(body), _boolean(body, "ignore_eos")
    try:  # GenerationConfig checks itself when made: its error is a 400 naming the field
        return GenerationConfig(
            max_new_tokens=min(max_tokens or room, room), temperature=temperature,
            # top_p 0 (allowed by OpenAI) keeps only the most likely token: the nucleus of a tiny mass.
            top_p=max(top_p, 1e-9), top_k=top_k, do_sample=temperature > 0,
            repetition_penalty=penalty, stop_strings=stop, ignore_eos=ignore_eos, seed=seed)
    except ValueError as e:
        raise APIError(400, str(e), str(e).split(":")[0]) from None


def _stream(body: dict) -> tuple[bool, bool]:
    stream = _boolean(body, "stream")
    opts = body.get("stream_options")
    if opts is None:
        return stream, False
    if not isinstance(opts, dict):
        raise bad_request("stream_options", f"'stream_options' must be an object, got {_type_name(opts)}")
    return stream, _boolean(opts, "include_usage")


def _model(body: dict) -> str | None:
    m = body.get("model")
    if m is not None and not isinstance(m, str):
        raise bad_request("model", f"'model' must be a string, got {_type_name(m)}")
    return m


def _fits(n_prompt: int, context: int, param: str) -> None:
    if n_prompt >= context:
        raise bad_request(param, f"the prompt has {n_prompt} tokens; the model's context is {context} tokens, "
                                 "which leaves no room to generate", code="context_length_exceeded")


def _content(m: Any, k: int) -> str:
    """A message's text: a string, or an array of {"type": "text", "text"} parts."""
    c = m.get("content")
    if isinstance(c, str):
        return c
    if isinstance(c, list):
        texts = []
        for j, part in enumerate(c):
            if not isinstance(part, dict) or part.get("type") != "text" or not isinstance(part.get("text"), str):
                raise bad_request(f"messages[{k}].content[{j}]", "only text parts ({'type': 'text', 'text': "
                                  "string}) are supported")
            texts.append(part["text"])
        return "".join(texts)
    raise bad_request(f"messages[{k}].content", f"'content' must be a string or an array of text parts, "
                                                f"got {_type_name(c)}")


def chat_messages(body: dict, normalize: Callable[[str], str] = str) -> list[dict[str, str]]:
    """`messages` checked: an array of {"role", "content"} with known roles; "developer" counts as system.
    Contents go through `normalize` (the model's text normalisation)."""
    msgs = body.get("messages")
    if not isinstance(msgs, list) or not msgs:
        raise bad_request("messages", f"'messages' must be a non-empty array, got {_type_name(msgs)}")
    out = []
    for k, m in enumerate(msgs):
        if not isinstance(m, dict):
            raise bad_request(f"messages[{k}]", f"each message must be an object, got {_type_name(m)}")
        role = m.get("role")
        if role not in ROLES:
            raise bad_request(f"messages[{k}].role", f"unknown role {role!r}: expected one of "
                                                     f"{', '.join(sorted(ROLES))}")
        out.append({"role": ROLES[role], "content": normalize(_content(m, k))})
    return out


def parse_chat(raw: bytes, tokenizer: Any, context: int, normalize: Callable[[str], str] = str) -> Job:
    body = load_json(raw)
    ids = tokenizer.apply_chat_template(chat_messages(body, normalize), add_generation_prompt=True)
    _fits(len(ids), context, "messages")
    stream, usage = _stream(body)
    return Job("chat", ids, _generation(body, len(ids), context), stream, usage, _model(body))


def _prompt_ids(body: dict, tokenizer: Any, vocab_size: int, normalize: Callable[[str], str]) -> list[int]:
    """`prompt`: a string, one string in an array, or token ids; an empty prompt starts a new document."""
    p = body.get("prompt")
    if isinstance(p, list) and len(p) == 1 and isinstance(p[0], (str, list)):
        p = p[0]
    if isinstance(p, str):
        ids = tokenizer.encode(normalize(p)) if p else []
    elif isinstance(p, list) and all(isinstance(t, int) and not isinstance(t, bool) for t in p):
        bad = [t for t in p if not 0 <= t < vocab_size]
        if bad:
            raise bad_request("prompt", f"token id {bad[0]} is outside the vocabulary [0, {vocab_size})")
        ids = list(p)
    elif isinstance(p, list):
        raise bad_request("prompt", "'prompt' must be a string, token ids, or an array holding one of those "
                                    "(one prompt per request)")
    else:
        raise bad_request("prompt", f"'prompt' must be a string or an array of token ids, got {_type_name(p)}")
    return ids or [getattr(tokenizer, "eos_id", 0)]


def parse_completion(raw: bytes, tokenizer: Any, context: int, vocab_size: int,
                     normalize: Callable[[str], str] = str) -> Job:
    body = load_json(raw)
    ids = _prompt_ids(body, tokenizer, vocab_size, normalize)
    _fits(len(ids), context, "prompt")
    if body.get("suffix") is not None:
        raise bad_request("suffix", "'suffix' is not supported")
    stream, usage = _stream(body)
    cfg = _generation(body, len(ids), context)
    if body.get("max_tokens") is None and body.get("max_completion_tokens") is None:
        cfg.max_new_tokens = min(16, cfg.max_new_tokens)  # the completions API's documented default
    return Job("completion", ids, cfg, stream, usage, _model(body))


def check(job: Job) -> Job:
    """GenerationConfig's own checks, as a 400 naming the field."""
    try:
        job.config.validate()
    except ValueError as e:
        raise APIError(400, str(e), str(e).split(":")[0]) from None
    return job
