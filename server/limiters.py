"""Which of the relay's actions are rate-limited, keyed by what, at which rates (SPEC §10).

One :class:`TokenBuckets` table per limited action, built from the relay's
configuration. Kept apart from the buckets themselves (``ratelimit``), which know
no action, and from the handlers that take a token (``delivery``, ``directory``,
``auth``), which need not know how the tables are built.
"""

from __future__ import annotations

from dataclasses import dataclass

from .config import RelayConfig
from .ratelimit import Clock, PairBuckets, TokenBuckets


@dataclass
class Limiters:
    """The token buckets of SPEC §10, keyed by handle or (sender, recipient)."""

    send_user: TokenBuckets
    send_business: TokenBuckets
    send_pair: PairBuckets
    """Per (sender, recipient). Follows its sender to another process with the account's
    buckets (:meth:`take_over`): kept per process, a business — whose account bucket is
    50 times the pair rate — got a full pair bucket on every worker (threat model T63)."""
    bundle_fetch: TokenBuckets
    consent_request: TokenBuckets
    """Per business (SPEC §7.3 "requests are rate-limited per business")."""
    prekeys_upload: TokenBuckets
    rotate_identity: TokenBuckets
    statement: TokenBuckets
    """Per account, besides the SEND token a statement costs: every accepted statement
    is logged for ever (SPEC §7.5, §15), so churn must be slower than sending. Kept per
    process, not taken over (SPEC §10): at an hour's refill, a bucket counted as emptied
    at every move or restart would make a user wait a minute to block anyone after each
    deploy; N processes allow N times the rate, still a bound on the log."""
    statements_list: TokenBuckets
    profile_put: TokenBuckets
    profile_fetch: TokenBuckets
    usage_fetch: TokenBuckets
    """Per account, taken before any other work for the request (SPEC §10)."""
    log_fetch: TokenBuckets
    """Per account once logged in, keyed by the handle, and per source before a login
    (SPEC §15.6: the log is read before any login), keyed by ``("source", source)``
    (``transparency.log_bucket``). Keyed by the connection, every login refilled it (T80)."""

    def per_account(self) -> tuple[TokenBuckets, ...]:
        """The buckets keyed by the account alone (SPEC §10): those that follow an
        account from one relay process to another (:meth:`take_over`)."""
        return (
            self.send_user, self.send_business, self.bundle_fetch, self.consent_request,
            self.prekeys_upload, self.rotate_identity, self.statements_list,
            self.profile_put, self.profile_fetch, self.usage_fetch, self.log_fetch,
        )  # fmt: skip

    def take_over(self, handle: str, spent_at: int) -> None:
        """``handle``'s last connection was served by another relay process: count its
        buckets as emptied at ``spent_at`` (that connection's end, or now if it may be
        alive), so N processes never give one account N buckets (SPEC §10) — and its
        pair buckets as a sender too (T63)."""
        for buckets in self.per_account():
            buckets.spent_at(handle, spent_at)
        self.send_pair.spent_at_owner(handle, spent_at)

    @classmethod
    def from_config(cls, config: RelayConfig, clock: Clock) -> Limiters:
        return cls(
            send_user=TokenBuckets(config.send_rate_user, config.send_burst_user, clock),
            send_business=TokenBuckets(
                config.send_rate_business, config.send_burst_business, clock
            ),
            send_pair=PairBuckets(config.send_rate_pair, config.send_burst_pair, clock),
            bundle_fetch=TokenBuckets(
                config.bundle_rate_per_min / 60.0, config.bundle_burst, clock
            ),
            consent_request=TokenBuckets(
                config.consent_request_rate_per_h / 3600.0, config.consent_request_burst, clock
            ),
            prekeys_upload=TokenBuckets(
                config.prekeys_upload_rate_per_min / 60.0, config.prekeys_upload_burst, clock
            ),
            rotate_identity=TokenBuckets(
                config.rotate_identity_rate_per_h / 3600.0, config.rotate_identity_burst, clock
            ),
            statement=TokenBuckets(
                config.statement_rate_per_h / 3600.0, config.statement_burst, clock
            ),
            statements_list=TokenBuckets(
                config.statements_list_rate_per_min / 60.0, config.statements_list_burst, clock
            ),
            profile_put=TokenBuckets(
                config.profile_put_rate_per_min / 60.0, config.profile_put_burst, clock
            ),
            profile_fetch=TokenBuckets(
                config.profile_fetch_rate_per_min / 60.0, config.profile_fetch_burst, clock
            ),
            usage_fetch=TokenBuckets(
                config.usage_fetch_rate_per_min / 60.0, config.usage_fetch_burst, clock
            ),
            log_fetch=TokenBuckets(
                config.log_fetch_rate_per_min / 60.0, config.log_fetch_burst, clock
            ),
        )
