"""Command line: `python -m core train|evaluate|predict ...` (see `python -m core --help`)."""

from core.cli import main

raise SystemExit(main())
