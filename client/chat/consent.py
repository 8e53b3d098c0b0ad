"""The chat's consent commands, a person's side of SPEC §7: answering businesses'
consent requests (grant, deny), revoking, blocking and unblocking anyone, through the
SDK's signed statements.

Not here: how a consent request is shown when it arrives (``console``), a business's
own commands (``business``).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable

from blindrelay.protocol import limits

from ..sdk import Client
from .usage import Usage, one_handle


class ConsentCommands:
    """/requests, /grant, /deny, /revoke, /block, /unblock; what they say goes through
    ``say``, a business's name through ``badge``."""

    def __init__(
        self,
        client: Client,
        say: Callable[[str], None],
        remember: Callable[[str, str], None],
        badge: Callable[[str], Awaitable[str]],
    ) -> None:
        self.client = client
        self.say = say
        self.remember = remember
        self.badge = badge

    def commands(self) -> dict[str, Callable[[str], Awaitable[None]]]:
        return {
            "requests": self.requests, "grant": self.grant, "deny": self.deny,
            "revoke": self.revoke, "block": self.block, "unblock": self.unblock,
        }  # fmt: skip

    async def requests(self, _rest: str) -> None:
        requests = self.client.store.consent_requests()
        if not requests:
            self.say("no consent requests waiting")
        for business, categories in sorted(requests.items()):
            cats = ",".join(categories)
            self.say(f"  {business} {await self.badge(business)} asks for {cats}")

    def _answered(self, business: str) -> None:
        self.client.store.set_consent_request(business, None)

    def _business_and_categories(
        self, rest: str, usage: str, *, default: bool
    ) -> tuple[str, list[str]]:
        words = rest.replace(",", " ").split()
        if not words:
            raise Usage(usage)
        business, categories = words[0], words[1:]
        if not categories and default:
            categories = list(self.client.store.consent_requests().get(business, ()))
        unknown = [c for c in categories if c not in limits.CATEGORIES]
        if not categories or unknown:
            raise Usage(f"{usage} (categories: {', '.join(limits.CATEGORIES)})")
        return business, categories

    async def grant(self, rest: str) -> None:
        business, categories = self._business_and_categories(
            rest, "/grant BUSINESS CATS", default=True
        )
        granted = await self.client.grant(business, categories)
        self._answered(business)
        self.remember(business, "business")
        self.say(f"granted {business}: {','.join(granted.categories or ())}")

    async def deny(self, rest: str) -> None:
        business, categories = self._business_and_categories(
            rest, "/deny BUSINESS [CATS]", default=True
        )
        await self.client.deny(business, categories)
        self._answered(business)
        self.say(f"denied {business}: {','.join(categories)}")

    async def revoke(self, rest: str) -> None:
        business, categories = self._business_and_categories(
            rest, "/revoke BUSINESS CATS", default=False
        )
        revoked = await self.client.revoke(business, categories)
        self.say(f"revoked {business}: {','.join(revoked.categories or ())}")

    async def block(self, rest: str) -> None:
        handle = one_handle(rest, "/block HANDLE")
        await self.client.block(handle)
        self._answered(handle)
        self.say(f"blocked {handle}: nothing of theirs reaches you")

    async def unblock(self, rest: str) -> None:
        handle = one_handle(rest, "/unblock HANDLE")
        await self.client.unblock(handle)
        self.say(f"unblocked {handle}")
