"""`python -m minigpt.train_worker`: kept as an entry point; the code lives in `minigpt.train.worker`."""
from .train.worker import *  # noqa: F401,F403
from .train.worker import main

if __name__ == "__main__":
    raise SystemExit(main())
