"""A business's metered counts are those of the month it asked for (SPEC §8.4, T61).

The attack (found in review, 2026-12-06): USAGE names the month it counts, "as asked",
but :meth:`Business.usage` returned whatever USAGE answered its fetch — a relay could
answer a month's fetch with another month's counts (a quiet one, to hide what it
metered) and the business read them as the month it asked about. Counts are the relay's
word (its bill is what a business checks, §8.5); which month they are of need not be.
"""

from __future__ import annotations

from collections.abc import Callable

import pytest

from blindrelay.client.business import Business
from blindrelay.protocol import frames
from blindrelay.protocol.errors import UnexpectedFrame

from .fake_relay import URL, FakeRelay, RelayEnd, answer_plainly
from .harness import online, run, within


def counting(month: str) -> Callable[[RelayEnd, frames.Frame], None]:
    """A relay answering every USAGE_FETCH with the counts of ``month``."""

    def answer(end: RelayEnd, frame: frames.Frame) -> None:
        if not isinstance(frame, frames.UsageFetch):
            answer_plainly(end, frame)
            return
        end.send(frames.Usage(
            re=frame.id, month=month,
            notifications=(frames.UsageCount("utility", 3),),
            service_replies=1, user_initiated=2,
        ))  # fmt: skip

    return answer


@pytest.mark.parametrize("answered", ["2026-10", "2026-11"])
def test_usage_of_another_month_than_asked_is_refused(answered: str) -> None:
    async def scenario() -> None:
        relay = FakeRelay()
        relay.answer = counting(answered)
        shop = Business(await online(URL, "shop", "business", open_transport=relay.open))
        if answered == "2026-11":
            usage = await within(shop.usage("2026-11"))
            assert (usage.month, usage.service_replies) == ("2026-11", 1)
        else:  # before: returned, October's counts read as November's
            with pytest.raises(UnexpectedFrame, match="2026-10"):
                await within(shop.usage("2026-11"))
        await shop.client.close()

    run(scenario())
