"""What the server answers, in OpenAI's shapes: chat completions and text completions, whole and as stream
chunks, and errors.

A stream is Server-Sent Events: `data: {chunk}\\n\\n` per piece, then `data: [DONE]\\n\\n`. A chat stream
starts with a chunk whose delta carries the role, sends text deltas, and ends with an empty delta that
carries `finish_reason`. With `stream_options.include_usage` every chunk has `"usage": null` and one
more chunk with empty `choices` carries the usage before [DONE].

An error is `{"error": {"message", "type", "param", "code"}}` with an HTTP status: an `APIError` raised while
reading the request (requests.py) or running it (app.py), answered by the app with `body()`.
"""
from __future__ import annotations

import json
import time
import uuid
from typing import Any


def usage(prompt_tokens: int, completion_tokens: int) -> dict[str, int]:
    return {"prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens,
            "total_tokens": prompt_tokens + completion_tokens}


def sse(obj: dict[str, Any] | str) -> bytes:
    """One Server-Sent Event; JSON keeps non-ASCII text as UTF-8 (a chunk never splits a character)."""
    data = obj if isinstance(obj, str) else json.dumps(obj, ensure_ascii=False, separators=(",", ":"))
    return f"data: {data}\n\n".encode("utf-8")


DONE = sse("[DONE]")


class Shape:
    """Builds the objects of one response (one id and creation time for all its chunks)."""

    def __init__(self, kind: str, model: str, include_usage: bool = False) -> None:
        self.kind, self.model, self.include_usage = kind, model, include_usage
        self.id = ("chatcmpl-" if kind == "chat" else "cmpl-") + uuid.uuid4().hex[:24]
        self.created = int(time.time())

    def _head(self, obj: str) -> dict[str, Any]:
        return {"id": self.id, "object": obj, "created": self.created, "model": self.model,
                "system_fingerprint": None}

    def whole(self, text: str, finish: str, prompt_tokens: int, completion_tokens: int) -> dict[str, Any]:
        """The non-streamed response."""
        if self.kind == "chat":
            choice = {"index": 0, "message": {"role": "assistant", "content": text}, "logprobs": None,
                      "finish_reason": finish}
            out = self._head("chat.completion")
        else:
            choice = {"index": 0, "text": text, "logprobs": None, "finish_reason": finish}
            out = self._head("text_completion")
        return {**out, "choices": [choice], "usage": usage(prompt_tokens, completion_tokens)}

    def chunk(self, text: str | None = None, finish: str | None = None, first: bool = False) -> dict[str, Any]:
        """A stream chunk: a text piece, or (finish set) the closing one; `first` adds the chat role."""
        if self.kind == "chat":
            delta: dict[str, Any] = {"role": "assistant", "content": ""} if first else {}
            if text:
                delta["content"] = text
            choice = {"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish}
            out = self._head("chat.completion.chunk")
        else:
            choice = {"index": 0, "text": text or "", "logprobs": None, "finish_reason": finish}
            out = self._head("text_completion")
        out["choices"] = [choice]
        if self.include_usage:
            out["usage"] = None
        return out

    def usage_chunk(self, prompt_tokens: int, completion_tokens: int) -> dict[str, Any]:
        obj = "chat.completion.chunk" if self.kind == "chat" else "text_completion"
        return {**self._head(obj), "choices": [], "usage": usage(prompt_tokens, completion_tokens)}


class APIError(Exception):
    """A request the server refuses; `param` names the offending field (e.g. "messages[1].role")."""

    def __init__(self, status: int, message: str, param: str | None = None, code: str | None = None,
                 type: str = "invalid_request_error") -> None:
        super().__init__(message)
        self.status, self.message, self.param, self.code, self.type = status, message, param, code, type

    def body(self) -> dict[str, Any]:
        return {"error": {"message": self.message, "type": self.type, "param": self.param, "code": self.code}}


def bad_request(param: str | None, message: str, code: str | None = None) -> APIError:
    return APIError(400, message, param, code)


def queue_full(limit: int) -> APIError:
    return APIError(429, f"the server is busy: {limit} requests are already waiting (--max-queue {limit}); "
                         "retry later", None, "queue_full", type="rate_limit_error")


def unauthorized() -> APIError:
    return APIError(401, "missing or wrong API key: send 'Authorization: Bearer KEY' with the key given to "
                         "--api-key", None, "invalid_api_key")


def shutting_down() -> APIError:
    return APIError(503, "the server is shutting down", None, "shutting_down", type="server_error")
