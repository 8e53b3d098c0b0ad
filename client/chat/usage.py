"""The chat's one error for a command typed wrongly (shared by ``console`` and
``business``)."""


class Usage(Exception):
    """A command typed wrongly: its one-line explanation is shown."""
