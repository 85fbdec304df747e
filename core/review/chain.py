"""The history's hash chain: a canonical encoding of an event's fields and the SHA-256 that links it to the one before.

Each event stores `prev_hash` (the previous event's `hash`; 64 zeros for the first event) and
`hash`, the SHA-256 of its canonical encoding: a JSON object of every stored field except `id`
and `hash` itself, keys sorted, no whitespace, UTF-8, no ASCII escaping (RFC 8785 style; numbers
are written as Python writes a float, the shortest text that reads back to the same double).
Because `prev_hash` is one of the hashed fields, changing, removing or inserting any event
changes a hash that a later event's `prev_hash` no longer matches.

Fields added after the first revisions (`detail`, revision 0003) are hashed only where they hold
something, so every event written before them keeps its hash.

Plain Python, no database: the store, the first migration (which chains a legacy history) and
any outside auditor compute the same hash from the same fields.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping, Sequence

from core.review.records import IDENTITY_COLUMNS, PROBABILITY_COLUMNS

GENESIS_HASH = "0" * 64
# Every stored field of an event except `id` and `hash`, in table order.
HASHED_COLUMNS: tuple[str, ...] = (
    "time", "session_id", "reviewer", *IDENTITY_COLUMNS, "kind", "sha256", "file_name", "model_version",
    "predicted_class", *PROBABILITY_COLUMNS, "verdict", "final_label", "reason", "note", "prev_hash",
)
# Hashed only when not empty: added by a later revision, absent from (or empty in) every earlier event.
OPTIONAL_HASHED_COLUMNS: tuple[str, ...] = ("detail",)


def canonical_bytes(event: Mapping, columns: Sequence[str] = HASHED_COLUMNS) -> bytes:
    """The canonical UTF-8 JSON of an event's hashed fields; raises KeyError when one is missing.

    `columns` is today's field list unless a migration passes the list frozen at its revision.
    """
    fields = {name: event[name] for name in columns}
    if columns is HASHED_COLUMNS:
        fields.update({name: event[name] for name in OPTIONAL_HASHED_COLUMNS if event.get(name)})
    return json.dumps(fields, sort_keys=True, separators=(",", ":"), ensure_ascii=False,
                      allow_nan=False).encode("utf-8")


def event_hash(event: Mapping, columns: Sequence[str] = HASHED_COLUMNS) -> str:
    """The SHA-256 (64 lower-case hex digits) of an event's canonical encoding, `prev_hash` included."""
    return hashlib.sha256(canonical_bytes(event, columns)).hexdigest()
