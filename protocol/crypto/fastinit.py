"""Cheap construction of the frozen dataclasses that every message creates.

A frozen dataclass's generated ``__init__`` stores each field through
``object.__setattr__`` (that is how it gets past its own ``__setattr__``, which
raises): ~0.15 µs per field here. A message creates a :class:`~.ratchet.RatchetState`
(10 fields), a :class:`~.session.Session` (6), a :class:`~.ratchet.Header` (3) and,
when decrypting, an :class:`~.session.EnvelopeInfo` (7): ~7 µs of a ~34 µs
steady-chain message went to field stores alone.

:func:`positional_constructor` returns a function that builds the same object,
with the same class, the same frozen guarantee and equal fields, by calling each
slot's descriptor directly. Like ``dataclasses`` builds ``__init__``, it is
generated source (field names only, from the class itself). It runs no
``__post_init__`` and applies no defaults: callers pass every field, in order, and
only where the values are already known to be valid. Tests compare it with the
real constructor for every class that uses it.
"""

from __future__ import annotations

import dataclasses
import keyword
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
    names = [field.name for field in dataclasses.fields(cls)]
    if not all(name.isidentifier() and not keyword.iskeyword(name) for name in names):
        raise TypeError(f"{cls.__name__} has a field name that is not an identifier")
    namespace: dict[str, Any] = {"_new": object.__new__, "_cls": cls}
    lines = [f"def make({', '.join(names)}):", "    obj = _new(_cls)"]
    for name in names:
        namespace[f"_set_{name}"] = cls.__dict__[name].__set__
        lines.append(f"    _set_{name}(obj, {name})")
    lines.append("    return obj")
    exec("\n".join(lines), namespace)  # noqa: S102 - source made of the class's own field names
    make: Callable[..., T] = namespace["make"]
    make.__qualname__ = f"positional_constructor({cls.__name__})"
    return make
