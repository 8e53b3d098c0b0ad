"""LEGACY — the untyped state bag, routed to the typed tables. Delete with its callers.

Until the SDK, sessions, business and chat call the typed methods, they keep
calling ``get_state``/``set_state``/``delete_state``/``state_items`` and
``append_log``/``read_log``/``delete_log`` with the keys below. Each known key
or prefix is routed to the table of its kind, so those callers and a profile
migrated from the bag (``schema``) agree; the opening of an old profile replays
its bag rows through this adapter. A key of no known kind is refused on write
(ValueError) and reads as absent. Once no caller is left, delete this module,
make the stores subclass ``SettingRecords`` and drop the bag from ``KeyStore``.

Old key or prefix → typed method::

    sdk/outbox/<ns 020d>.<msg_id hex>  queue_outgoing(OutboxEntry) / outbox() / retire_outgoing
    sdk/statement-count/<counterpart>  statement_counts() (written by keep_statement)
    statements/<counterpart> (log)     keep_statement / kept_statements(counterpart, start)
    sdk/statements/<counterpart>       (format before the log) each one keep_statement
    sdk/held/<sender>                  held_counts() / held_counts_of (written by hold_message,
                                       count_dropped, release_held_messages)
    held/<sender> (log)                hold_message / held_messages / release_held_messages
    sdk/owed-receipts/<sender>         owed_receipts / set_owed_receipts / all_owed_receipts
    sdk/wrote-to/<handle>              note_wrote_to / wrote_to() / forget_wrote_to
    sdk/relay-key                      relay_key() / set_relay_key
    sdk/registered                     is_registered() / set_registered
    sdk/rotating-identity-seed         rotating_identity_seed() / set_rotating_identity_seed
    identity-change/<handle>           pending_identity_change / record_identity_change /
                                       clear_identity_change / pending_identity_changes
    business/profile                   business_profile() / set_business_profile
    business/away/<customer>           away_reply_period / set_away_reply_period
    chat/contacts (JSON object)        chat_contacts() / set_chat_contact
    chat/requests (JSON object)        consent_requests() / set_consent_request
    sdk/outbox (single list, unread since the outbox got one entry per envelope): retired
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import msgpack

from .records import HeldCounts, OutboxEntry
from .settings import SettingRecords

_OUTBOX = "sdk/outbox/"
_CHANGE = "identity-change/"
RETIRED_KEYS = frozenset({"sdk/outbox"})
"""Keys no code has read for several versions: absent, and dropped by the migration."""


def _require_key(key: object) -> None:
    if not isinstance(key, str) or not key:
        raise TypeError("state key must be a non-empty str")


def _require_value(value: object) -> None:
    if not isinstance(value, bytes):
        raise TypeError("state value must be bytes")


def _u64(value: int) -> bytes:
    return value.to_bytes(8, "big")


def _from_u64(value: bytes) -> int:
    if len(value) != 8:
        raise ValueError("expected a u64 (8 bytes)")
    return int.from_bytes(value, "big")


def _packed_list(value: bytes) -> list[Any]:
    items = msgpack.unpackb(value, raw=False)
    if not isinstance(items, list):
        raise ValueError("expected a packed list")
    return items


def _json_object(value: bytes) -> dict[str, Any]:
    loaded = json.loads(value)
    if not isinstance(loaded, dict):
        raise ValueError("expected a JSON object")
    return loaded


@dataclass(frozen=True, slots=True)
class _Route:
    """How one kind's old keys read and write; ``suffix`` is the key after the prefix."""

    get: Callable[[LegacyStateBag, str], bytes | None]
    set: Callable[[LegacyStateBag, str, bytes], None]
    delete: Callable[[LegacyStateBag, str], None]
    items: Callable[[LegacyStateBag], list[tuple[str, bytes]]]
    """(suffix, value) of every entry of the kind."""


def _outbox_key(entry: OutboxEntry) -> str:
    return f"{entry.position:020d}.{entry.msg_id.hex()}"


def _pack_outgoing(entry: OutboxEntry) -> bytes:
    categories = None if entry.categories is None else list(entry.categories)
    fields = [entry.to, entry.envelope, entry.intent, entry.category, categories]
    packed: bytes = msgpack.packb(fields, use_bin_type=True)
    return packed


def _outbox_get(store: LegacyStateBag, suffix: str) -> bytes | None:
    entry = store.outgoing(bytes.fromhex(suffix.partition(".")[2]))
    return None if entry is None or _outbox_key(entry) != suffix else _pack_outgoing(entry)


def _outbox_delete(store: LegacyStateBag, suffix: str) -> None:
    store.retire_outgoing(bytes.fromhex(suffix.partition(".")[2]))


def _old_statements_set(store: LegacyStateBag, counterpart: str, value: bytes) -> None:
    """A list in the format before the log: filed as kept statements, in order."""
    with store.atomic():
        for signed in _packed_list(value):
            store.keep_statement(counterpart, bytes(signed))


def _held_counts_get(store: LegacyStateBag, sender: str) -> bytes | None:
    counts = store.held_counts_of(sender)
    return None if counts is None else _u64(counts.held) + _u64(counts.dropped)


def _json_routes(
    read: Callable[[LegacyStateBag], dict[str, Any]],
    write: Callable[[LegacyStateBag, str, Any], None],
    value_of: Callable[[Any], Any],
) -> _Route:
    """A whole JSON object under one key, kept as one row per member."""

    def get(store: LegacyStateBag, _: str) -> bytes | None:
        members = read(store)
        return json.dumps(members, sort_keys=True).encode() if members else None

    def set_(store: LegacyStateBag, _: str, value: bytes) -> None:
        members = {name: value_of(member) for name, member in _json_object(value).items()}
        with store.atomic():
            for name in read(store).keys() - members.keys():
                write(store, name, None)
            for name, member in members.items():
                write(store, name, member)

    def delete(store: LegacyStateBag, _: str) -> None:
        with store.atomic():
            for name in read(store):
                write(store, name, None)

    def items(store: LegacyStateBag) -> list[tuple[str, bytes]]:
        value = get(store, "")
        return [] if value is None else [("", value)]

    return _Route(get, set_, delete, items)


def _str_member(member: Any) -> str:
    if not isinstance(member, str):
        raise ValueError("expected a str")
    return member


def _categories_member(member: Any) -> tuple[str, ...]:
    if not isinstance(member, list) or not all(isinstance(c, str) for c in member):
        raise ValueError("expected a list of str")
    return tuple(member)


def _setting(
    read: Callable[[LegacyStateBag], bytes | None],
    write: Callable[[LegacyStateBag, bytes | None], None],
) -> _Route:
    def items(store: LegacyStateBag) -> list[tuple[str, bytes]]:
        value = read(store)
        return [] if value is None else [("", value)]

    return _Route(
        lambda store, _: read(store),
        lambda store, _, value: write(store, value),
        lambda store, _: write(store, None),
        items,
    )


def _refused(store: LegacyStateBag, suffix: str, value: bytes) -> None:
    raise ValueError("no record kind for this state key")


def _nothing(store: LegacyStateBag, suffix: str) -> None:
    return None


_EXACT: dict[str, _Route] = {
    "sdk/relay-key": _setting(lambda s: s.relay_key(), lambda s, v: s.set_relay_key(v)),
    "sdk/registered": _setting(
        lambda s: b"1" if s.is_registered() else None,
        lambda s, v: s.set_registered(v is not None),
    ),
    "sdk/rotating-identity-seed": _setting(
        lambda s: s.rotating_identity_seed(), lambda s, v: s.set_rotating_identity_seed(v)
    ),
    "business/profile": _setting(
        lambda s: s.business_profile(), lambda s, v: s.set_business_profile(v)
    ),
    "chat/contacts": _json_routes(
        lambda s: s.chat_contacts(), lambda s, h, kind: s.set_chat_contact(h, kind), _str_member
    ),
    "chat/requests": _json_routes(
        lambda s: {b: list(cats) for b, cats in s.consent_requests().items()},
        lambda s, b, cats: s.set_consent_request(b, cats),
        _categories_member,
    ),
    **{key: _Route(_nothing, _refused, _nothing, lambda s: []) for key in RETIRED_KEYS},
}

_LOGS = {"statements/": "statements", "held/": "held_messages"}
"""Log group prefix → its table; the rest of the group name is the counterpart."""


def _route(key: str) -> tuple[_Route, str] | None:
    route = _EXACT.get(key)
    if route is not None:
        return route, ""
    for prefix, route in _PREFIXES.items():
        if key.startswith(prefix) and len(key) > len(prefix):
            return route, key[len(prefix) :]
    return None


def _log_table(group: str) -> tuple[str, str] | None:
    for prefix, table in _LOGS.items():
        if group.startswith(prefix) and len(group) > len(prefix):
            return table, group[len(prefix) :]
    return None


class LegacyStateBag(SettingRecords):
    """The old bag methods over the typed tables (see the module docstring)."""

    # The SDK reads a pending identity change and writes an outbox entry for every
    # message it sends, and deletes that entry at SENT: those three go straight to
    # their kind, the rest through the routes.

    def get_state(self, key: str) -> bytes | None:
        _require_key(key)
        if key.startswith(_CHANGE) and len(key) > len(_CHANGE):
            return self.pending_identity_change(key[len(_CHANGE) :])
        found = _route(key)
        return None if found is None else found[0].get(self, found[1])

    def set_state(self, key: str, value: bytes) -> None:
        _require_key(key)
        _require_value(value)
        if key.startswith(_OUTBOX) and len(key) > len(_OUTBOX):
            self.set_outbox_state(key[len(_OUTBOX) :], value)
            return
        found = _route(key)
        if found is None:
            raise ValueError(f"no record kind for the state key {key.partition('/')[0]!r}…")
        found[0].set(self, found[1], value)

    def delete_state(self, key: str) -> None:
        _require_key(key)
        if key.startswith(_OUTBOX) and len(key) > len(_OUTBOX):
            _outbox_delete(self, key[len(_OUTBOX) :])
            return
        found = _route(key)
        if found is not None:
            found[0].delete(self, found[1])

    def state_items(self, prefix: str) -> list[tuple[str, bytes]]:
        """Every entry whose key starts with ``prefix``, sorted by key; reads only the
        kinds whose keys can start with it."""
        items: list[tuple[str, bytes]] = []
        for key, route in _EXACT.items():
            if key.startswith(prefix):
                items.extend((key, value) for _, value in route.items(self))
        for kind, route in _PREFIXES.items():
            if kind.startswith(prefix) or prefix.startswith(kind):
                found = ((kind + suffix, value) for suffix, value in route.items(self))
                items.extend(item for item in found if item[0].startswith(prefix))
        return sorted(items)

    def append_log(self, group: str, value: bytes) -> None:
        _require_key(group)
        if not isinstance(value, bytes):
            raise TypeError("log record must be bytes")
        found = _log_table(group)
        if found is None:
            raise ValueError("no record kind for this log group")
        self._append(found[0], found[1], value)

    def read_log(self, group: str, start: int = 0) -> list[bytes]:
        _require_key(group)
        found = _log_table(group)
        return [] if found is None else self._read(found[0], found[1], start)

    def delete_log(self, group: str, count: int | None = None) -> None:
        _require_key(group)
        found = _log_table(group)
        if found is not None:
            self._drop(found[0], found[1], count)

    def set_outbox_state(self, suffix: str, value: bytes) -> None:
        """An entry as the SDK packed it: one per message, so no OutboxEntry is built
        (the SDK checked the SEND it makes; here only its parts' types)."""
        position, _, msg_id = suffix.partition(".")
        to, envelope, intent, category, categories = _packed_list(value)
        if not (
            isinstance(to, str) and isinstance(envelope, bytes) and isinstance(intent, str)
            and (category is None or isinstance(category, str))
            and (categories is None or all(isinstance(c, str) for c in categories))
        ):  # fmt: skip
            raise ValueError("not an outbox entry")
        categories = None if categories is None else tuple(categories)
        self._queue_row(
            int(position), bytes.fromhex(msg_id), to, envelope, intent, category, categories
        )

    # The two counts the SDK writes beside its log appends, as it wrote them

    def set_statement_count_state(self, counterpart: str, value: bytes | None) -> None:
        self._write_statement_count(counterpart, None if value is None else _from_u64(value))

    def set_held_counts_state(self, sender: str, value: bytes | None) -> None:
        if value is not None and len(value) != 16:
            raise ValueError("held counts are two u64")
        counts = None if value is None else HeldCounts(_from_u64(value[:8]), _from_u64(value[8:]))
        self._write_held_counts(sender, counts)


_PREFIXES: dict[str, _Route] = {  # the two read or written per message first
    _CHANGE: _Route(
        lambda s, h: s.pending_identity_change(h),
        lambda s, h, key: s.record_identity_change(h, key),
        lambda s, h: s.clear_identity_change(h),
        lambda s: list(s.pending_identity_changes().items()),
    ),
    _OUTBOX: _Route(
        _outbox_get,
        LegacyStateBag.set_outbox_state,
        _outbox_delete,
        lambda s: [(_outbox_key(e), _pack_outgoing(e)) for e in s.outbox()],
    ),
    "sdk/statements/": _Route(_nothing, _old_statements_set, _nothing, lambda s: []),
    "sdk/statement-count/": _Route(
        lambda s, c: _u64(s.statement_count(c)) if s.statement_count(c) else None,
        LegacyStateBag.set_statement_count_state,
        lambda s, c: s.set_statement_count_state(c, None),
        lambda s: [(c, _u64(n)) for c, n in s.statement_counts().items()],
    ),
    "sdk/held/": _Route(
        _held_counts_get,
        LegacyStateBag.set_held_counts_state,
        lambda s, sender: s.set_held_counts_state(sender, None),
        lambda s: [
            (sender, _u64(c.held) + _u64(c.dropped)) for sender, c in s.held_counts().items()
        ],
    ),
    "sdk/owed-receipts/": _Route(
        lambda s, h: (
            msgpack.packb(s.owed_receipts(h), use_bin_type=True) if s.owed_receipts(h) else None
        ),
        lambda s, h, v: s.set_owed_receipts(h, [bytes(m) for m in _packed_list(v)]),
        lambda s, h: s.set_owed_receipts(h, []),
        lambda s: [
            (h, msgpack.packb(ids, use_bin_type=True)) for h, ids in s.all_owed_receipts().items()
        ],
    ),
    "sdk/wrote-to/": _Route(
        lambda s, h: b"" if h in s.wrote_to() else None,
        lambda s, h, _: s.note_wrote_to(h),
        lambda s, h: s.forget_wrote_to(h),
        lambda s: [(h, b"") for h in s.wrote_to()],
    ),
    "business/away/": _Route(
        lambda s, c: None if (p := s.away_reply_period(c)) is None else _u64(p),
        lambda s, c, v: s.set_away_reply_period(c, _from_u64(v)),
        lambda s, c: s.set_away_reply_period(c, None),
        lambda s: [(c, _u64(p)) for c, p in s.away_reply_periods().items()],
    ),
}
