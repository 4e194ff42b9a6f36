"""`python -m minigpt.serve CKPT`: see minigpt/serve/cli.py."""
from .cli import main

raise SystemExit(main())
