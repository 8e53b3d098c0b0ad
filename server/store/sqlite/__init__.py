"""The embedded back end: one SQLite file, written by one writer process."""
