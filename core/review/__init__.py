"""Review: what reviewers record and how it is kept - the history store, the record's rules, the worklist, export.

Owns the vocabulary and rules of a review record (`records`: verdicts, statuses, limits, final
labels, filters and summaries), the append-only history store (`store`, on SQLite or PostgreSQL,
with its tables and engines in `database` and its schema migrations in `migrations`: the only
modules that touch a database), the hash chain's canonical encoding (`chain`), the worklist's
plain logic (`worklist`), the spreadsheet-safe CSV writer (`export`) that the app and the
CLI share, who may do what (`identity`: ID-token claims and the roles file mapped to roles) and
the double-reading rules (`reads`: each reader's read, second reads, adjudication, final label,
agreement between readers), and monitoring (`monitor`: performance against the final labels, input
drift and reader figures over time, with alerts, from the store's SQL aggregates).

It may import `core.pipeline` (a worklist holds pipeline results) and everything below it; never
`core.training` or the CLI. Pages reach the store only through the app's glue (`app.support`).
"""
