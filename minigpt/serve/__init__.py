"""Serving a checkpoint with an OpenAI-compatible API (the optional `serve` extra: fastapi, uvicorn).

- engine.py: continuous batching over the decode step; one thread owns the model and the batch;
- requests.py: request bodies -> prompt ids and a GenerationConfig, or a 400 naming the field;
- responses.py: OpenAI's response and stream-chunk objects, Server-Sent Events, and error bodies;
- app.py: the FastAPI routes; cli.py: `python -m minigpt.serve CKPT`.

    from minigpt.serve import Engine, create_app
    app = create_app(Engine(model, tokenizer, max_batch=8), model_name="minigpt")
"""
from .engine import Engine, Event, QueueFull, Request

__all__ = ["Engine", "Event", "QueueFull", "Request", "create_app"]


def __getattr__(name: str):
    if name == "create_app":  # needs fastapi (the serve extra); the engine does not
        from .app import create_app

        return create_app
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
