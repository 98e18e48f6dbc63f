"""Whether a change to a key's limits only tightens them: a key may do that to itself, never
the reverse (auth.require_not_own_limits). Each function names the first field that would be
raised, or returns None."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

# The periods a quota may move to and stay at least as strict: those that contain every
# period of the old kind. A day lies inside one week and one month, but an ISO week can
# straddle two months (50 a month allows 100 in the week across the 1st).
_CONTAINING = {"day": {"day", "week", "month"}, "week": {"week"}, "month": {"month"}}


def _rate_limit_covered(old: Mapping[str, Any], new: Iterable[Mapping[str, Any]]) -> bool:
    """Some new window allows no more requests than ``old`` over at least as long."""
    return any(n["limit"] <= old["limit"] and n["window_s"] >= old["window_s"] for n in new)


def _quota_tighter(old: Mapping[str, Any] | None, new: Mapping[str, Any] | None) -> bool:
    if old is None:
        return True
    if new is None:
        return False
    return bool(new["limit"] <= old["limit"] and new["period"] in _CONTAINING[old["period"]])


def _at_most(old: Any, new: Any) -> bool:
    """For limits where null means unlimited (usage_limit, expires_at)."""
    return old is None or (new is not None and new <= old)


def raised(current: Mapping[str, Any], wanted: Mapping[str, Any]) -> str | None:
    """The first limit field in ``wanted`` that is looser than in ``current``: an earlier or
    equal ``expires_at`` and ``usage_limit``; a ``quota`` with no higher limit over the same
    period or one containing it (a day's quota may become a week's or a month's);
    ``rate_limits`` in which every current window is still enforced by one allowing no more
    requests over at least as long a window (extra windows are fine)."""
    if "expires_at" in wanted and not _at_most(current["expires_at"], wanted["expires_at"]):
        return "expires_at"
    if "usage_limit" in wanted and not _at_most(current["usage_limit"], wanted["usage_limit"]):
        return "usage_limit"
    if "quota" in wanted and not _quota_tighter(current["quota"], wanted["quota"]):
        return "quota"
    if "rate_limits" in wanted and not rate_limits_kept(current["rate_limits"],
                                                        wanted["rate_limits"]):
        return "rate_limits"
    return None


def rate_limits_kept(current: Iterable[Mapping[str, Any]],
                     wanted: Iterable[Mapping[str, Any]]) -> bool:
    """Every current window is still enforced by a wanted one at least as strict."""
    wanted = list(wanted)
    return all(_rate_limit_covered(old, wanted) for old in current)
