"""The chat's commands for a business account: consent requests, notifications, the
profile, its hours and the away reply (SPEC §7.3, §8.2, §8.3), through the SDK's
:class:`~blindrelay.client.business.Business`.

Not here: the commands every account has, and how messages are shown (``console``).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable

from blindrelay.protocol import limits
from blindrelay.protocol.business import OpeningHours
from blindrelay.protocol.errors import BlindrelayError

from ..business import Business
from .usage import Usage

BUSINESS_COMMANDS: dict[str, tuple[str, str]] = {
    "request-consent": ("/request-consent USER CATS TEXT",
                        "ask USER to consent to CATS, explaining why in TEXT"),
    "notify": ("/notify CATEGORY TEXT", "send TEXT to every customer who granted CATEGORY"),
    "profile": ("/profile NAME [TIMEZONE]", "publish your profile: the name you claim, your "
                "time zone (IANA, default UTC)"),
    "hours": ("/hours DAYS HH:MM-HH:MM", "opening hours, e.g. mon-fri 09:00-17:00, published "
              "with your profile"),
    "away": ("/away [TEXT]", "the reply customers get while you are closed (none: off)"),
}  # fmt: skip
"""A business's own commands, shown to business accounts only."""

DAYS = ("mon", "tue", "wed", "thu", "fri", "sat", "sun")


class BusinessCommands:
    """A business's own commands; what they say goes through ``say``."""

    def __init__(
        self,
        business: Business,
        say: Callable[[str], None],
        remember: Callable[[str, str], None],
    ) -> None:
        self.business = business
        self.say = say
        self.remember = remember
        self._hours: list[OpeningHours] = []
        """Opening hours set with /hours, published with the profile."""

    def commands(self) -> dict[str, Callable[[str], Awaitable[None]]]:
        return {
            "request-consent": self.request_consent, "notify": self.notify,
            "profile": self.profile, "hours": self.hours, "away": self.away,
        }  # fmt: skip

    async def request_consent(self, rest: str) -> None:
        words = rest.split(maxsplit=2)
        if len(words) < 3:
            raise Usage(BUSINESS_COMMANDS["request-consent"][0])
        user, cats, text = words
        categories = cats.replace(",", " ").split()
        if not categories or any(c not in limits.CATEGORIES for c in categories):
            raise Usage(f"/request-consent USER CATS TEXT (CATS: {','.join(limits.CATEGORIES)})")
        await self.business.request_consent(user, categories, text)
        self.remember(user, "user")
        self.say(f"asked {user} for {','.join(categories)}")

    async def notify(self, rest: str) -> None:
        category, _, text = rest.partition(" ")
        if category not in limits.CATEGORIES or not text:
            raise Usage(f"/notify CATEGORY TEXT (CATEGORY: {', '.join(limits.CATEGORIES)})")
        result = await self.business.notify(category, text)
        if not result.sent and not result.refused:
            self.say(f"nobody has granted {category} yet: nothing sent")
            return
        refused = f"; refused for {', '.join(result.refused)}" if result.refused else ""
        self.say(f"notified {len(result.sent)}: {', '.join(result.sent)}{refused}")

    async def profile(self, rest: str) -> None:
        words = rest.split()
        if not words:
            raise Usage(BUSINESS_COMMANDS["profile"][0])
        timezone = "UTC"
        if len(words) > 1 and ("/" in words[-1] or words[-1] == "UTC"):
            timezone = words.pop()
        await self._publish(" ".join(words), timezone)

    async def _publish(self, name: str, timezone: str) -> None:
        published = await self.business.publish_profile(
            display_name=name, timezone=timezone, hours=self._hours
        )
        hours = f", {len(published.hours)} opening interval(s)" if published.hours else ""
        self.say(f"profile published: {published.display_name} ({published.timezone}{hours})")

    async def hours(self, rest: str) -> None:
        words = rest.split()
        if len(words) != 2:
            raise Usage(BUSINESS_COMMANDS["hours"][0])
        try:
            days = _days(words[0])
            open_, close = (_minutes(t) for t in words[1].split("-"))
            self._hours = [OpeningHours(day=d, open=open_, close=close) for d in days]
        except (ValueError, BlindrelayError):
            raise Usage("/hours DAYS HH:MM-HH:MM, e.g. /hours mon-fri 09:00-17:00") from None
        current = self.business.profile
        if current is None:
            self.say("hours kept: publish them with /profile NAME [TIMEZONE]")
            return
        await self._publish(current.display_name, current.timezone)

    async def away(self, rest: str) -> None:
        business = self.business
        business.away_message = rest or None
        self.say(f"away reply: {rest}" if rest else "away reply off")


def _days(text: str) -> list[int]:
    """``mon-fri``, ``sat``, ``mon,wed`` → weekday numbers (0 = Monday)."""
    days: list[int] = []
    for part in text.lower().split(","):
        first, _, last = part.partition("-")
        start, end = DAYS.index(first), DAYS.index(last or first)
        days += list(range(start, end + 1))
    return days


def _minutes(text: str) -> int:
    hours, _, minutes = text.partition(":")
    return int(hours) * 60 + int(minutes or 0)
