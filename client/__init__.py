"""The blindrelay client SDK: key custody, end-to-end sessions, the relay link.

Depends on :mod:`blindrelay.protocol`; never on :mod:`blindrelay.server`.
"""
