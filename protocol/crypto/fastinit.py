"""Cheap construction of the frozen dataclasses that every message creates.

A frozen dataclass's generated ``__init__`` stores each field through
``object.__setattr__`` (that is how it gets past its own ``__setattr__``, which
raises): ~0.15 µs per field here. A message creates a :class:`~.ratchet.RatchetState`
(10 fields), a :class:`~.session.Session` (6), a :class:`~.ratchet.Header` (3) and,
when decrypting, an :class:`~.session.EnvelopeInfo` (7): ~7 µs of a ~34 µs
steady-chain message went to field stores alone.

:func:`positional_constructor` returns a function that builds the same object,
with the same class, the same frozen guarantee and equal fields, by calling each
slot's descriptor directly (no generated source: a loop over the descriptors'
setters, fixed when the constructor is made). It runs no
``__post_init__`` and applies no defaults: callers pass every field, in order, and
only where the values are already known to be valid. Tests compare it with the
real constructor for every class that uses it.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any, TypeVar

T = TypeVar("T")


def positional_constructor(cls: type[T]) -> Callable[..., T]:
    """``make(v1, ..., vn)`` equivalent to ``cls(v1, ..., vn)`` for a slots dataclass
    without ``__post_init__``, taking every field positionally."""
    if not dataclasses.is_dataclass(cls) or "__slots__" not in cls.__dict__:
        raise TypeError(f"{cls.__name__} is not a slots dataclass")
    if hasattr(cls, "__post_init__"):
        raise TypeError(f"{cls.__name__} has __post_init__; use its constructor")
    setters = tuple(cls.__dict__[field.name].__set__ for field in dataclasses.fields(cls))
    new = object.__new__

    count = len(setters)

    def make(*values: Any) -> T:
        if len(values) != count:
            raise TypeError(f"{cls.__name__} takes {count} fields, got {len(values)}")
        obj: T = new(cls)
        for store, value in zip(setters, values, strict=True):
            store(obj, value)
        return obj

    make.__qualname__ = f"positional_constructor({cls.__name__})"
    return make
