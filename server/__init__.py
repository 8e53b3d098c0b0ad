"""The blindrelay relay: stores and forwards opaque envelopes, enforces consent.

Depends on :mod:`blindrelay.protocol`; never on :mod:`blindrelay.client`.
"""
