"""positional_constructor builds objects equal to the dataclass constructor's."""

from __future__ import annotations

import dataclasses

import pytest

from blindrelay.protocol.crypto import ratchet as dr
from blindrelay.protocol.crypto import session as s
from blindrelay.protocol.crypto.fastinit import positional_constructor
from blindrelay.protocol.crypto.keys import SignedPreKey, X25519KeyPair


def sample_values(cls):
    """One distinct value per field, whatever its type (the constructor checks none)."""
    return [f"{cls.__name__}.{field.name}" for field in dataclasses.fields(cls)]


@pytest.mark.parametrize("cls", [dr.Header, dr.RatchetState, s.Session, s.EnvelopeInfo])
def test_same_class_fields_and_frozenness_as_the_constructor(cls):
    values = sample_values(cls)
    made = positional_constructor(cls)(*values)
    assert type(made) is cls
    assert made == cls(*values)
    assert [getattr(made, f.name) for f in dataclasses.fields(cls)] == values
    with pytest.raises(dataclasses.FrozenInstanceError):
        made.__setattr__(dataclasses.fields(cls)[0].name, "changed")


def test_the_module_level_constructors_cover_every_field():
    """A field added to a hot-path class without updating a caller fails here, not later."""
    for make, cls in (
        (dr._make_header, dr.Header),
        (dr._make_state, dr.RatchetState),
        (s._make_session, s.Session),
        (s._make_info, s.EnvelopeInfo),
    ):
        values = sample_values(cls)
        assert make(*values) == cls(*values)
        with pytest.raises(TypeError):
            make(*values[:-1])


def test_refuses_classes_it_cannot_build_faithfully():
    with pytest.raises(TypeError, match="__post_init__"):
        positional_constructor(SignedPreKey)

    @dataclasses.dataclass(frozen=True)
    class NoSlots:
        a: int

    with pytest.raises(TypeError, match="slots"):
        positional_constructor(NoSlots)
    assert positional_constructor(X25519KeyPair)(b"a", b"b") == X25519KeyPair(b"a", b"b")
