"""OpenAI-style errors: `{"error": {"message", "type", "param", "code"}}` with an HTTP status."""
from __future__ import annotations

from typing import Any


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
