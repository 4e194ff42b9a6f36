"""`python -m minigpt.chat`: kept as an entry point; the code lives in `minigpt.infer.chat`."""
from .infer.chat import *  # noqa: F401,F403
from .infer.chat import main

if __name__ == "__main__":
    raise SystemExit(main())
