"""The end-to-end content format (protocol/content.py): canonical encoding, strict decoding."""

from __future__ import annotations

import msgpack
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from blindrelay.protocol.content import (
    MAX_CONTENT_BYTES,
    MAX_RECEIPT_REFS,
    Content,
    Data,
    Kind,
    Labels,
    MalformedContent,
    Receipt,
    ReceiptType,
    Text,
    content_encoder,
    decode_content,
    encode_content,
)
from blindrelay.protocol.crypto.padding import MAX_PLAINTEXT_BYTES

MSG_ID = bytes(range(16))
REF = bytes(range(16, 32))


def pack(obj: object) -> bytes:
    return msgpack.packb(obj, use_bin_type=True)


@pytest.mark.parametrize(
    ("body", "kind"),
    [
        (Text("hello, world ✈"), Kind.TEXT),
        (Text(""), Kind.TEXT),
        (Data(b"\x00\xff" * 10), Kind.BYTES),
        (Receipt(ReceiptType.DELIVERED, (REF,)), Kind.RECEIPT),
        (Receipt(ReceiptType.READ, (REF, MSG_ID)), Kind.RECEIPT),
    ],
)
def test_every_kind_round_trips_canonically(body: Text | Data | Receipt, kind: Kind) -> None:
    content = Content(MSG_ID, body)
    data = encode_content(content)
    decoded = decode_content(data)
    assert decoded == content
    assert decoded.kind is kind
    assert encode_content(decoded) == data


def test_encoding_puts_keys_in_spec_order() -> None:
    data = encode_content(Content(MSG_ID, Receipt(ReceiptType.READ, (REF,))))
    assert list(msgpack.unpackb(data, raw=False)) == [
        "v", "id", "intent", "kind", "receipt", "refs",
    ]  # fmt: skip
    text = encode_content(Content(MSG_ID, Text("hi")))
    assert text == pack({"v": 2, "id": MSG_ID, "intent": "chat", "kind": "text", "text": "hi"})
    notification = Content(MSG_ID, Text("hi"), b"h", Labels("notification", "utility"))
    assert encode_content(notification) == pack(
        {"v": 2, "id": MSG_ID, "intent": "notification", "category": "utility",
         "kind": "text", "text": "hi", "sth": b"h"}
    )  # fmt: skip
    request = Content(MSG_ID, Data(b"x"), None, Labels("consent_request", None, ("marketing",)))
    assert encode_content(request) == pack(
        {"v": 2, "id": MSG_ID, "intent": "consent_request", "categories": ["marketing"],
         "kind": "bytes", "data": b"x"}
    )  # fmt: skip


LABELS = [
    Labels(),
    Labels("notification", "utility"),
    Labels("notification", "marketing"),
    Labels("consent_request", None, ("utility",)),
    Labels("consent_request", None, ("marketing", "utility")),
]


@pytest.mark.parametrize("labels", LABELS, ids=str)
def test_the_send_s_labels_round_trip_in_any_kind(labels: Labels) -> None:
    """SPEC §13.11: the content carries its SEND's intent, category and categories, exactly
    as the SEND does, so a recipient can hold them against the DELIVER's (rule 4)."""
    receipt = Receipt(ReceiptType.READ, (REF,))
    for body in (Text("hi"), Data(b"x"), receipt) if labels == Labels() else (Text(""), Data(b"")):
        content = Content(MSG_ID, body, b"h", labels)
        data = encode_content(content)
        assert decode_content(data) == content
        assert decode_content(data).labels == labels
        assert content_encoder(body, b"h", labels)(MSG_ID) == data


@pytest.mark.parametrize("labels", LABELS[1:], ids=str)
def test_a_receipt_travels_as_chat_only(labels: Labels) -> None:
    """SPEC §13.11 rule 6: receipts are chats, so the relay cannot tell them from text."""
    with pytest.raises(MalformedContent, match="receipt"):
        Content(MSG_ID, Receipt(ReceiptType.READ, (REF,)), None, labels)
    fields: dict[str, object] = {**VALID_RECEIPT, "intent": labels.intent}
    if labels.category is not None:
        fields["category"] = labels.category
    if labels.categories is not None:
        fields["categories"] = list(labels.categories)
    with pytest.raises(MalformedContent):
        decode_content(pack(fields))


@pytest.mark.parametrize(
    "labels",
    [
        Labels("statement"),  # the relay's, never a sender's (SPEC §6.2)
        Labels("sticker"),
        Labels("notification"),
        Labels("notification", "cats"),
        Labels("chat", "utility"),
        Labels("consent_request"),
        Labels("consent_request", None, ()),
        Labels("consent_request", None, ("utility", "utility")),
        Labels("chat", None, ("utility",)),
        Labels("notification", "utility", ("utility",)),
        Labels(b"chat"),  # type: ignore[arg-type]
        Labels("notification", b"utility"),  # type: ignore[arg-type]
    ],
    ids=repr,
)
def test_labels_no_send_may_carry_are_refused_both_ways(labels: Labels) -> None:
    with pytest.raises(MalformedContent):
        Content(MSG_ID, Text("hi"), None, labels)
    fields: dict[str, object] = {"v": 2, "id": MSG_ID, "intent": labels.intent}
    if labels.category is not None:
        fields["category"] = labels.category
    if labels.categories is not None:
        fields["categories"] = list(labels.categories)
    with pytest.raises(MalformedContent):
        decode_content(pack({**fields, "kind": "text", "text": "hi"}))


def test_labels_of_other_types_than_the_wire_s_are_refused() -> None:
    for labels in (
        Labels("consent_request", None, ["utility"]),  # type: ignore[arg-type]
        Labels("consent_request", None, ("utility", 1)),  # type: ignore[arg-type]
        ("chat", None, None),
    ):
        with pytest.raises(MalformedContent):
            Content(MSG_ID, Text("hi"), None, labels)  # type: ignore[arg-type]


def test_version_1_content_is_refused_unless_read_from_the_client_s_own_inbox() -> None:
    """SPEC §13.11 rule 7: version 1 has no labels, so it is refused from the wire. Only a
    client's inbox row written before the upgrade reads it, with its DELIVER's labels."""
    v1 = pack({"v": 1, "id": MSG_ID, "kind": "text", "text": "hi"})
    with pytest.raises(MalformedContent, match="v must be 2"):
        decode_content(v1)
    kept = Labels("notification", "utility")
    assert decode_content(v1, accepted_as=kept) == Content(MSG_ID, Text("hi"), None, kept)
    v1_head = pack({"v": 1, "id": MSG_ID, "kind": "text", "text": "hi", "sth": b"h"})
    assert decode_content(v1_head, accepted_as=kept).sth == b"h"
    for not_v1 in (
        encode_content(Content(MSG_ID, Text("hi"))),
        pack({"v": 1, "id": MSG_ID, "intent": "chat", "kind": "text", "text": "hi"}),
    ):
        with pytest.raises(MalformedContent):
            decode_content(not_v1, accepted_as=kept)


def test_a_tree_head_rides_last_in_any_kind_and_round_trips() -> None:
    """SPEC §13.11: the optional ``sth`` (§15.6 gossip) comes after the kind's fields."""
    head = b"\x0a" * 160
    for body in (Text("hi"), Data(b"x"), Receipt(ReceiptType.READ, (REF,))):
        content = Content(MSG_ID, body, head)
        data = encode_content(content)
        assert list(msgpack.unpackb(data, raw=False))[-1] == "sth"
        assert decode_content(data) == content
        assert content_encoder(body, head)(MSG_ID) == data
    for bad in (b"", b"x" * 257):
        with pytest.raises(MalformedContent):
            Content(MSG_ID, Text("hi"), bad)
        with pytest.raises(MalformedContent):
            decode_content(pack({**VALID_TEXT, "sth": bad}))
    with pytest.raises(MalformedContent):
        decode_content(pack({**VALID_TEXT, "sth": "not bin"}))


def test_largest_content_fits_the_largest_padding_bucket() -> None:
    assert MAX_CONTENT_BYTES == MAX_PLAINTEXT_BYTES
    overhead = len(encode_content(Content(MSG_ID, Data(b""))))
    fits = Content(MSG_ID, Data(b"x" * (MAX_CONTENT_BYTES - overhead - 2)))
    assert len(encode_content(fits)) <= MAX_CONTENT_BYTES
    with pytest.raises(MalformedContent):
        encode_content(Content(MSG_ID, Data(b"x" * MAX_CONTENT_BYTES)))


VALID_TEXT = {"v": 2, "id": MSG_ID, "intent": "chat", "kind": "text", "text": "hi"}
VALID_RECEIPT = {
    "v": 2, "id": MSG_ID, "intent": "chat", "kind": "receipt", "receipt": "read", "refs": [REF],
}  # fmt: skip


@pytest.mark.parametrize(
    "data",
    [
        pytest.param(b"", id="empty"),
        pytest.param(pack(VALID_TEXT)[:-1], id="truncated"),
        pytest.param(pack(VALID_TEXT) + b"\x00", id="trailing-bytes"),
        pytest.param(pack([1, MSG_ID, "text", "hi"]), id="array-not-map"),
        pytest.param(pack({**VALID_TEXT, "extra": 1}), id="unknown-key"),
        pytest.param(pack({k: v for k, v in VALID_TEXT.items() if k != "text"}), id="missing-key"),
        pytest.param(pack({**VALID_TEXT, "data": b"x"}), id="key-of-another-kind"),
        pytest.param(pack({**VALID_TEXT, "v": 3}), id="unknown-version"),
        pytest.param(pack({**VALID_TEXT, "v": 1}), id="version-1"),
        pytest.param(pack({k: v for k, v in VALID_TEXT.items() if k != "intent"}), id="no-intent"),
        pytest.param(pack({**VALID_TEXT, "intent": b"chat"}), id="bin-for-str-intent"),
        pytest.param(pack({**VALID_TEXT, "category": None}), id="nil-category"),
        pytest.param(
            pack({**VALID_TEXT, "intent": "consent_request", "categories": "utility"}),
            id="categories-not-array",
        ),
        pytest.param(
            pack({**VALID_TEXT, "intent": "consent_request", "categories": ["a"] * 300}),
            id="categories-too-many",
        ),
        pytest.param(pack({**VALID_TEXT, "v": True}), id="bool-for-int"),
        pytest.param(pack({**VALID_TEXT, "v": 1.0}), id="float-for-int"),
        pytest.param(pack({**VALID_TEXT, "kind": "sticker"}), id="unknown-kind"),
        pytest.param(pack({**VALID_TEXT, "text": b"hi"}), id="bin-for-str"),
        pytest.param(pack({**VALID_TEXT, "text": None}), id="nil"),
        pytest.param(pack({**VALID_TEXT, "id": MSG_ID[:15]}), id="short-id"),
        pytest.param(pack({**VALID_TEXT, "id": "0" * 16}), id="str-for-bin-id"),
        pytest.param(
            pack({"v": 2, "id": MSG_ID, "intent": "chat", "kind": "bytes", "data": "x"}),
            id="str-for-bin",
        ),
        pytest.param(pack({**VALID_RECEIPT, "receipt": "seen"}), id="unknown-receipt-type"),
        pytest.param(pack({**VALID_RECEIPT, "refs": []}), id="no-refs"),
        pytest.param(pack({**VALID_RECEIPT, "refs": [REF, REF]}), id="duplicate-refs"),
        pytest.param(pack({**VALID_RECEIPT, "refs": [REF[:8]]}), id="short-ref"),
        pytest.param(pack({**VALID_RECEIPT, "refs": [[REF]]}), id="nested-ref"),
        pytest.param(pack({**VALID_RECEIPT, "refs": REF}), id="refs-not-array"),
        pytest.param(
            pack({**VALID_RECEIPT, "refs": [i.to_bytes(16, "big") for i in range(MAX_RECEIPT_REFS + 1)]}),
            id="too-many-refs",
        ),
        pytest.param(
            b"\x85\xa1v\x02\xa1v\x02\xa2id\xc4\x10" + MSG_ID + b"\xa6intent\xa4chat\xa4kind\xa4text",
            id="duplicate-key",
        ),
        pytest.param(pack({1: 1}), id="int-key"),
        # Found by fuzzing (tests/fuzz/corpus/content/crash-mixed-keys): a bin key beside
        # an unknown str key made the error message sort str with bytes (TypeError, T77).
        pytest.param(pack({**VALID_TEXT, "a": 0, b"b": 0}), id="bin-key-beside-a-str-key"),
        pytest.param(pack({**VALID_TEXT, b"sth": b"x"}), id="bin-key"),
        pytest.param(pack({**VALID_TEXT, "sth": None}), id="nil-sth"),
        pytest.param(
            pack({**VALID_TEXT, "text": msgpack.ExtType(5, b"x")}), id="extension-type"
        ),
        pytest.param(b"\x91" * 2000, id="deep-nesting"),
        pytest.param(pack({**VALID_TEXT, "text": "x" * MAX_CONTENT_BYTES}), id="too-large"),
        pytest.param(
            b"\x85\xa1v\x02\xa2id\xc4\x10" + MSG_ID
            + b"\xa6intent\xa4chat\xa4kind\xa4text\xa4text\xa2\xff\xfe",
            id="invalid-utf8",
        ),
    ],
)
def test_decoder_refuses_malformed_content(data: bytes) -> None:
    with pytest.raises(MalformedContent):
        decode_content(data)


def test_receipt_limits_are_checked_at_construction_too() -> None:
    with pytest.raises(MalformedContent):
        Receipt(ReceiptType.READ, ())
    with pytest.raises(MalformedContent):
        Receipt("read", (REF,))  # type: ignore[arg-type]
    assert len(Receipt(ReceiptType.READ, tuple(bytes([i]) * 16 for i in range(256))).refs) == 256
    with pytest.raises(MalformedContent):
        Content(b"short", Text("x"))


# --- content_encoder: one body, many msg_ids -------------------------------------------

msg_ids = st.binary(min_size=16, max_size=16)
bodies = st.one_of(
    st.text(max_size=300).map(Text),
    st.binary(max_size=70_000).map(Data),
    st.builds(
        Receipt,
        st.sampled_from(list(ReceiptType)),
        st.lists(msg_ids, min_size=1, max_size=MAX_RECEIPT_REFS, unique=True).map(tuple),
    ),
)


@settings(max_examples=200)
@given(bodies, st.lists(msg_ids, max_size=5))
def test_content_encoder_gives_encode_contents_bytes_or_its_error(
    body: Text | Data | Receipt, ids: list[bytes]
) -> None:
    try:
        expected = encode_content(Content(MSG_ID, body))
    except MalformedContent:
        with pytest.raises(MalformedContent):
            content_encoder(body)
        return
    encode_for = content_encoder(body)
    assert encode_for(MSG_ID) == expected
    for msg_id in [bytes(16), b"\xff" * 16, b"\xc4\x10" * 8, *ids]:
        assert encode_for(msg_id) == encode_content(Content(msg_id, body))


@pytest.mark.parametrize("msg_id", [bytes(15), bytes(17), b"", bytearray(16), "x" * 16])
def test_content_encoder_refuses_an_id_encode_content_refuses(msg_id: bytes) -> None:
    with pytest.raises(MalformedContent):
        Content(msg_id, Text("hi"))
    with pytest.raises(MalformedContent):
        content_encoder(Text("hi"))(msg_id)


@pytest.mark.parametrize("body", [Text("x" * MAX_CONTENT_BYTES), Data(bytes(MAX_CONTENT_BYTES))])
def test_content_encoder_refuses_a_body_too_large_as_encode_content_does(
    body: Text | Data,
) -> None:
    with pytest.raises(MalformedContent):
        encode_content(Content(MSG_ID, body))
    with pytest.raises(MalformedContent):
        content_encoder(body)
