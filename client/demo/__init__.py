"""``blindrelay demo``: the whole story in one command, and what the relay saw of it.

An airline asks a customer for consent, notifies her of a flight time, answers
her question, sends its away reply after hours, and is refused once she blocks
it — played over real sockets against a relay running as a subprocess on a
temporary database. Every scene shows two views: what each client sees (the
plaintext, decrypted on the device) and what the relay sees — the frames the
clients put on the wire and the relay sent back, decoded as the relay decodes
them: handles, frame types, intents, sizes and ciphertext. It ends with the
relay's own inventory (``blindrelay inspect``) and a digest of its log.

The relay and the operator's steps are subprocesses (``serve``, ``admin``,
``inspect``): the client package never imports the server, and the demo uses
the same commands an operator would.

Where each part lives::

    story    the story itself: its lines, a table of scenes, play() and run()
    stage    what it plays on: the relay and the operator's commands as
             subprocesses, and the airline's desk clock
    wire     the frames on the wire, described as the relay reads them
    screen   what the terminal shows: colours, scene headings, the two views

Not here: the SDK (``sdk``, ``business``), the interactive client (``chat``).
"""

from .screen import Style
from .story import (
    ANSWER,
    AWAY_MESSAGE,
    EXPLANATION,
    NOTIFICATION,
    STORY_PLAINTEXTS,
    run,
)
from .wire import describe_envelope

__all__ = [
    "ANSWER",
    "AWAY_MESSAGE",
    "EXPLANATION",
    "NOTIFICATION",
    "STORY_PLAINTEXTS",
    "Style",
    "describe_envelope",
    "run",
]
