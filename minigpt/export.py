"""`python -m minigpt.export`: kept as an entry point; the code lives in `minigpt.infer.export`."""
from .infer.export import *  # noqa: F401,F403
from .infer.export import main

if __name__ == "__main__":
    raise SystemExit(main())
