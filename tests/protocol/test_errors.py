"""protocol/errors.py: a received ERROR becomes its named exception (SPEC §9, §12.3)."""

from __future__ import annotations

import pytest

from blindrelay.protocol.errors import (
    ERRORS_BY_CODE,
    InternalError,
    RateLimited,
    StoreUnavailable,
    error_for_code,
)


@pytest.mark.parametrize("cls", [RateLimited, StoreUnavailable])
def test_a_retryable_error_carries_the_errors_retry_after(cls: type[RateLimited]) -> None:
    error = error_for_code(int(cls.code), "slow down", 1_500)
    assert type(error) is cls and error.retry_after_ms == 1_500 and error.detail == "slow down"
    assert error_for_code(int(cls.code)).retry_after_ms == 1  # type: ignore[attr-defined]


def test_every_other_code_ignores_a_retry_after() -> None:
    for code, cls in ERRORS_BY_CODE.items():
        if cls not in (RateLimited, StoreUnavailable):
            error = error_for_code(int(code), "", 1_500)
            assert type(error) is cls and not hasattr(error, "retry_after_ms")


def test_an_unknown_code_is_an_internal_error() -> None:
    assert type(error_for_code(999, "", 5)) is InternalError
