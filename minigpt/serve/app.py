"""The FastAPI app: /v1/chat/completions, /v1/completions, /v1/models and /health over one `Engine`.

Every error is OpenAI's JSON shape (responses.py). With an API key, every path but /health needs
`Authorization: Bearer KEY`. A client that disconnects cancels its request: a watcher on the ASGI
receive channel sees `http.disconnect` and the engine drops the row at its next step.
"""
from __future__ import annotations

import asyncio
import hmac
import logging
import time
from contextlib import asynccontextmanager
from typing import Any, AsyncIterator

from fastapi import FastAPI, Request as HTTPRequest
from fastapi.responses import JSONResponse, StreamingResponse
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.requests import ClientDisconnect
from starlette.responses import Response

from .engine import Engine, Event, QueueFull, Request
from .protocol import ServerLimits, server_config
from .requests import Job, check, parse_chat, parse_completion
from .responses import DONE, APIError, Shape, queue_full, shutting_down, sse, unauthorized

logger = logging.getLogger(__name__)


class _Call:
    """One request in the engine, seen from the event loop: its events arrive on an asyncio queue."""

    def __init__(self, engine: Engine, job: Job, http: HTTPRequest) -> None:
        loop = asyncio.get_running_loop()
        self.queue: asyncio.Queue[Event] = asyncio.Queue()

        def sink(ev: Event) -> None:  # on the engine thread
            try:
                loop.call_soon_threadsafe(self.queue.put_nowait, ev)
            except RuntimeError:  # the event loop is gone (shutdown): nobody is listening
                pass

        self.req = Request(job.prompt_ids, job.config, sink)
        try:
            engine.submit(self.req)
        except QueueFull:
            raise queue_full(engine.max_queue) from None
        except RuntimeError:
            raise shutting_down() from None
        self.watch = asyncio.create_task(self._watch(http))

    async def _watch(self, http: HTTPRequest) -> None:
        while True:
            message = await http.receive()
            if message["type"] == "http.disconnect":
                logger.info("client disconnected: request cancelled")
                self.req.cancel()
                return

    async def events(self) -> AsyncIterator[Event]:
        try:
            while True:
                ev = await self.queue.get()
                yield ev
                if ev.finish is not None:
                    return
        finally:
            self.req.cancel()  # no-op once finished; frees the row when the stream is abandoned
            self.watch.cancel()


class _RequireKey:
    """ASGI middleware: 401 unless `Authorization: Bearer KEY` (plain ASGI, so streams and disconnects
    pass through untouched)."""

    def __init__(self, app: Any, key: str) -> None:
        self.app, self.expected = app, f"Bearer {key}".encode()

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        if scope["type"] == "http" and scope["path"] != "/health":
            given = dict(scope["headers"]).get(b"authorization", b"")
            if not hmac.compare_digest(given, self.expected):
                await _error(unauthorized())(scope, receive, send)
                return
        await self.app(scope, receive, send)


def _error(e: APIError) -> JSONResponse:
    headers = {"Retry-After": "1"} if e.status == 429 else None
    return JSONResponse(e.body(), status_code=e.status, headers=headers)


def create_app(engine: Engine, model_name: str = "minigpt", api_key: str | None = None) -> FastAPI:
    """The app; its lifespan starts the engine and closes it after the last request has ended.

    api_key None serves without a key; an empty key is refused (no client could send it)."""
    if api_key is not None and not api_key.strip():
        raise ValueError("api_key: expected a non-empty key (or None for no key); an empty key would make "
                         "every request but /health fail with 401")

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        engine.start()
        yield
        engine.close()

    app = FastAPI(title="minigpt", lifespan=lifespan, docs_url=None, redoc_url=None, openapi_url=None)
    app.state.engine = engine

    _error_handlers(app)
    if api_key is not None:
        app.add_middleware(_RequireKey, key=api_key)

    def check_model(job: Job) -> Job:
        if job.model is not None and job.model != model_name:
            raise APIError(404, f"the model {job.model!r} does not exist; this server serves {model_name!r}",
                           "model", "model_not_found")
        return check(job)

    async def run(job: Job, http: HTTPRequest) -> Any:
        call = _Call(engine, check_model(job), http)
        shape = Shape(job.kind, model_name, job.include_usage)
        if job.stream:
            return StreamingResponse(_stream(call, shape, len(job.prompt_ids)), media_type="text/event-stream",
                                     headers={"Cache-Control": "no-cache"})
        return await _whole(call, shape, len(job.prompt_ids))

    @app.post("/v1/chat/completions")
    async def chat(http: HTTPRequest) -> Any:
        return await run(parse_chat(await http.body(), engine.tokenizer, engine.context, engine.normalize), http)

    @app.post("/v1/completions")
    async def completions(http: HTTPRequest) -> Any:
        return await run(parse_completion(await http.body(), engine.tokenizer, engine.context, engine.vocab_size,
                                          engine.normalize), http)

    _info_routes(app, engine, model_name)
    return app


def _error_handlers(app: FastAPI) -> None:
    """Every error as OpenAI's JSON shape; a client gone before its body arrived as one log line."""

    @app.exception_handler(APIError)
    async def api_error(_: HTTPRequest, e: APIError) -> JSONResponse:
        return _error(e)

    @app.exception_handler(ClientDisconnect)
    async def disconnected(http: HTTPRequest, _: ClientDisconnect) -> Response:
        # The client went away before its body arrived (or was dropped by the body deadline): one line, no
        # traceback; nobody is left to read the response.
        client = "%s:%d" % http.client if http.client else "a client"
        logger.info("%s %s from %s: the client disconnected before sending its whole body",
                    http.method, http.url.path, client)
        return Response(status_code=400)

    @app.exception_handler(StarletteHTTPException)
    async def http_error(http: HTTPRequest, e: StarletteHTTPException) -> JSONResponse:
        return _error(APIError(e.status_code, f"{http.method} {http.url.path}: {e.detail}", None, None))


def _info_routes(app: FastAPI, engine: Engine, model_name: str) -> None:
    """GET /v1/models, /v1/models/{name} and /health (the engine's rows and queue)."""
    card = {"id": model_name, "object": "model", "created": int(time.time()), "owned_by": "minigpt",
            "context_length": engine.context}

    @app.get("/v1/models")
    async def models() -> dict[str, Any]:
        return {"object": "list", "data": [card]}

    @app.get("/v1/models/{name}")
    async def model(name: str) -> dict[str, Any]:
        if name != model_name:
            raise APIError(404, f"the model {name!r} does not exist; this server serves {model_name!r}",
                           "model", "model_not_found")
        return card

    @app.get("/health")
    async def health() -> dict[str, Any]:
        return {"status": "ok", "model": model_name, **engine.stats()}


async def _whole(call: _Call, shape: Shape, n_prompt: int) -> JSONResponse:
    pieces = []
    async for ev in call.events():
        pieces.append(ev.text)
        if ev.finish == "error":
            raise APIError(500, ev.error or "generation failed", None, None, type="server_error")
        if ev.finish:
            return JSONResponse(shape.whole("".join(pieces), ev.finish, n_prompt, ev.completion_tokens))
    raise APIError(500, "generation ended without a result", None, None, type="server_error")


async def _stream(call: _Call, shape: Shape, n_prompt: int) -> AsyncIterator[bytes]:
    first = True
    async for ev in call.events():
        if ev.finish == "error":  # headers are sent: the error travels as an event, as OpenAI's do
            yield sse(APIError(500, ev.error or "generation failed", None, None, type="server_error").body())
            break
        if ev.text or (first and shape.kind == "chat"):
            yield sse(shape.chunk(ev.text, None, first=first and shape.kind == "chat"))
            first = False
        if ev.finish:
            yield sse(shape.chunk(None, ev.finish))
            if shape.include_usage:
                yield sse(shape.usage_chunk(n_prompt, ev.completion_tokens))
    yield DONE


class ThreadedServer:
    """uvicorn serving `app` on a background thread (tests, the bench, a notebook); port 0 picks a free one.

        with ThreadedServer(create_app(engine)) as server:
            client = openai.OpenAI(base_url=server.url + "/v1", api_key="-")
    """

    def __init__(self, app: Any, host: str = "127.0.0.1", port: int = 0, limits: ServerLimits | None = None) -> None:
        import threading

        import uvicorn

        self.server = uvicorn.Server(server_config(app, host, port, limits, log_level="warning",
                                                   access_log=False, timeout_graceful_shutdown=5))
        self.thread = threading.Thread(target=self.server.run, name="minigpt-serve", daemon=True)
        self.url = ""

    def __enter__(self) -> "ThreadedServer":
        self.thread.start()
        deadline = time.monotonic() + 30
        while not self.server.started:
            if not self.thread.is_alive() or time.monotonic() > deadline:
                raise RuntimeError("the server did not start (see the log above)")
            time.sleep(0.01)
        host, port = self.server.servers[0].sockets[0].getsockname()[:2]
        self.url = f"http://{host}:{port}"
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.should_exit = True
        self.thread.join(30)
