"""``blindrelay chat``: a line-based terminal client a person can use against any relay.

One profile file holds the account (keystore sealed with a passphrase, asked
with getpass or read from ``--passphrase-env``). The first run registers the
handle — only once the relay accepted it is the profile registered, so a refused
handle leaves it to try another; later runs log in. On a terminal the input line
is prompt_toolkit's (editing, ↑ history, a prompt naming whom plain lines go to and
whether the relay is reachable), and incoming messages are printed above it; on a
pipe, a file or a dumb terminal the chat reads line by line. Commands start with
``/`` (``/help``, ``/help COMMAND``); a business account also gets
``/request-consent``, ``/notify``, ``/profile``, ``/hours`` and ``/away``. The
conversations are kept in the profile, sealed, the last 1,000 lines of each
(``keystore.settings.MAX_CHAT_LINES``), and shown again at the next run.

Trust is shown, never assumed (SPEC §3.3, §13.9): a contact's first key is
pinned, ``/safety`` prints the number to compare and ``/verify`` records the
comparison; a changed key is announced in capitals and ``/msg`` refuses to
send until ``/approve``. Businesses show their badge only when it verifies
against the operator key given with ``--operator-key`` (SPEC §8.1), and then
under the badge's name; the name in a business's own profile is shown only
as its unverified claim, flagged when it differs from the badge's.

Where each part lives::

    session   one run: open the profile, register or log in, read lines until /quit
    console   the Chat: each command, and each message and receipt as it is shown
    consent   a person's consent commands: /requests, /grant, /deny, /revoke, /block
    business  a business account's own commands: /request-consent, /notify, /profile…
    usage     the error for a command typed wrongly, and the parsing commands share

Not here: the protocol and key custody (``sdk``, ``sessions``, ``keystore``).
"""

from .console import Chat
from .session import Options, read_passphrase, run, session

__all__ = ["Chat", "Options", "read_passphrase", "run", "session"]
