"""`python -m minigpt.plots`: kept as an entry point; the code lives in `minigpt.ui.plots`."""
from .ui.plots import *  # noqa: F401,F403
from .ui.plots import main

if __name__ == "__main__":
    raise SystemExit(main())
