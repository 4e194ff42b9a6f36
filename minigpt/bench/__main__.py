"""`python -m minigpt.bench`."""
from . import main

raise SystemExit(main())
