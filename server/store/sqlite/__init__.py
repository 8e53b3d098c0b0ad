"""The embedded back end: one SQLite file, written by one writer process (the default).

- ``store`` — :class:`~.store.SqliteStore` and :class:`~.store.SqliteAdminStore`, what
  the relay and the operator's commands see (``blindrelay.server.store`` protocols);
- ``writer`` / ``writer_process`` — the relay's side of the writer process and the
  process itself: jobs by name over a socketpair in msgpack, group commit;
- ``jobs`` — the operations of ``..operations.CONTRACT``, as run by the writer;
- ``tables`` — schema, migrations and the tables; ``commit`` — group commit
  (:class:`~.commit.GroupCommitter`); ``ledger``, ``metering``, ``profiles`` — the
  consent, usage and business tables; ``cache`` — the writer's write-through caches;
- ``inspection`` — ``blindrelay inspect``'s report.

Nothing outside this package imports it but the factory in ``blindrelay.server.store``
(``tests/test_layering.py``). Importing the package loads nothing: the writer
process imports its modules without the relay's.
"""
