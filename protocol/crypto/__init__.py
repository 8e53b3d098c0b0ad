"""Cryptographic constructions (X3DH, Double Ratchet, padding) on PyNaCl.

Pure functions and small state objects: no key storage, no I/O. Key custody
lives in :mod:`blindrelay.client.keystore`.
"""
