"""KC's verdict on one limited key (bench/cluster.py): the benchmark reports "correct" only
when exactly the limit got through, by the upstream's count and by PostgreSQL's, and the
burst after the load did run into the limit. The whole setup runs in test_load_harness.py."""

from __future__ import annotations

from collections import Counter

from bench.cluster import USAGE_LIMIT, exact


def test_exactly_the_limit_through_is_correct() -> None:
    assert exact(USAGE_LIMIT, USAGE_LIMIT, Counter({200: 20, 429: 80}))
    assert exact(USAGE_LIMIT, USAGE_LIMIT, Counter({429: 100}))  # the load had spent it all


def test_one_request_too_many_or_too_few_is_not() -> None:
    burst = Counter({200: 21, 429: 79})
    assert not exact(USAGE_LIMIT + 1, USAGE_LIMIT + 1, burst)  # over-admitted
    assert not exact(USAGE_LIMIT + 1, USAGE_LIMIT, burst)  # the upstream got one uncounted
    assert not exact(USAGE_LIMIT, USAGE_LIMIT - 1, burst)  # PostgreSQL missed one
    assert not exact(USAGE_LIMIT, None, burst)  # the key is not in PostgreSQL


def test_a_burst_that_never_met_the_limit_or_failed_is_not() -> None:
    assert not exact(USAGE_LIMIT, USAGE_LIMIT, Counter({200: 100}))
    assert not exact(USAGE_LIMIT, USAGE_LIMIT, Counter({200: 20, 429: 79, 503: 1}))
