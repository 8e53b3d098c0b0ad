"""The shared back end: PostgreSQL through asyncpg, for N relay workers on one database.

- ``store`` — :class:`~.store.PostgresStore`, the relay's: one ordered stream of
  group-committed batches per worker, reconnecting by itself after an outage;
- ``admin`` — :class:`~.admin.PostgresAdminStore`, the operator's (synchronous);
- ``batch`` — how one batch runs: its locks, the set-based SENDs, ACKs and PAGEs,
  every other operation one by one, hints, and what a failure undoes;
- ``operations`` — the operations of ``..operations.CONTRACT`` that are not set-based;
- ``schema`` — tables and versioned migrations (``schema_version``);
- ``sync`` — asyncpg on a private event loop, for synchronous callers, with one-line
  failures;
- ``inspection`` — ``blindrelay inspect``'s report.

Nothing outside this package imports it but the factory in ``blindrelay.server.store``,
and only for a ``postgresql://`` URL: the embedded default loads no PostgreSQL driver.
"""
