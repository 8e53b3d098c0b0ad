"""The transparency log: an append-only RFC 9162 Merkle tree per relay (SPEC §15).

Sans-I/O like the rest of :mod:`blindrelay.protocol`: hashing, proofs and
their verification (:mod:`.merkle`), the byte-exact entries a log holds
(:mod:`.entries`), signed tree heads (:mod:`.treehead`), an auditor's check of a
whole log (:mod:`.audit`) and the offline proof of a logged statement
(:mod:`.evidence`). Time and keys are
parameters. The relay's store keeps the entries and complete-subtree hashes;
clients and auditors verify with these functions alone.
"""
