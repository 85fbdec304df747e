"""A progress bar for the long commands, written to stderr so it never mixes with CSV or JSON output."""

from __future__ import annotations

import sys
from collections.abc import Iterable, Iterator
from typing import TypeVar

from tqdm import tqdm

Item = TypeVar("Item")


def progress(items: Iterable[Item], total: int | None = None, description: str = "") -> Iterator[Item]:
    """Yield `items` while drawing a progress bar on stderr (plain lines when stderr is not a terminal)."""
    yield from tqdm(items, total=total, desc=description, file=sys.stderr, disable=None, mininterval=1.0,
                    dynamic_ncols=True, leave=False)
