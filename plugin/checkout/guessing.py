"""Guessing: which refusals are guesses, the odds an attacker has at our limits, and the
merchant's alert when failures across a shop pass the threshold (a guessing attack).

The limits themselves are `plugin.checkout.ratelimit.GuessLimits`; the web layer decides whom a call's
failures count against (`plugin.web.api`).
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import Engine

from plugin.checkout.ratelimit import GuessLimits, attempts_per_year
from plugin.distribution import claimstore
from plugin.formats import codes
from plugin.rules.refusals import Reason
from plugin.settings import Settings
from plugin.store.db import session_scope

ALERT_KIND = "guessing"


# The refusals that spend a shopper's failure budget: only misses, the codes that do not exist.
GUESSES: frozenset[Reason] = frozenset({Reason.UNKNOWN_CODE, Reason.MISTYPED_CODE})
# Decided per reason; every other refusal is of a code that exists, and never counts:
# - a live code refused for this basket, channel, currency or the shopper's own history (the
#   nudges: "spend £12 more", customer_limit_reached, first_order_only): the shopper is filling
#   a basket, not guessing; counting only locks out buyers.
# - dead codes (voided, already_redeemed, usage_limit_reached, expired, campaign_ended,
#   budget_exhausted): nothing left to find, and honest crowds meet them (a used-up code shared
#   on social media), often through one merchant server.
# - codes live for someone, now or later (held_by_other_checkout, bound_to_other_customer,
#   customer_required, campaign_draft, campaign_paused, not_yet_valid): a race for the last
#   codes of a drop answers `held_by_other_checkout` to every checkout but one, all through the
#   merchant's server; a guest meets `customer_required` once before signing in.
# The guess-probability bound needs only the misses counted: an attempt that hits any existing
# code is the very event the bound measures, so hits (like successes) are free. The generic
# view still answers the masked ones exactly like `unknown_code`; only the pace of the 429s
# could hint that one of a guesser's attempts hit some code, and only after that rare hit.


def counts_as_guess(reason: Reason) -> bool:
    """Whether a refusal spends the shopper's failure budget (`GUESSES`, reasons above)."""
    return reason in GUESSES


@dataclass(frozen=True)
class Odds:
    """Chances that guessing finds one of a format's live codes within a year (`codes.guess_probability`:
    ``1 - (1 - L/S)^A`` for ``L`` live codes of ``S`` possible, ``A`` guesses a year)."""

    per_shopper: float  # one attacker identity (an address or customer) at the per-shopper limit
    below_alarm: float  # any number of identities together, staying just under the shop-wide alert
    per_unnamed_key: float  # through a server key whose calls name no shopper, at its ceiling


@dataclass(frozen=True)
class Budgets:
    """Guesses a year an attacker gets at our limits."""

    per_shopper: int
    below_alarm: int
    per_unnamed_key: int

    @classmethod
    def of(cls, limits: GuessLimits) -> Budgets:
        return cls(limits.attempts_per_shopper(), limits.attempts_below_alarm(), limits.attempts_per_unnamed_key())

    @classmethod
    def from_settings(cls, settings: Settings) -> Budgets:
        return cls(
            attempts_per_year(settings.failed_code_limit),
            attempts_per_year(settings.guessing_alert),
            attempts_per_year(settings.failed_code_limit_unnamed),
        )


def odds(fmt: codes.CodeFormat, live_codes: int, budgets: Budgets) -> Odds:
    live = max(live_codes, 1)
    return Odds(
        per_shopper=codes.guess_probability(fmt, live, budgets.per_shopper),
        below_alarm=codes.guess_probability(fmt, live, budgets.below_alarm),
        per_unnamed_key=codes.guess_probability(fmt, live, budgets.per_unnamed_key),
    )


def describe(odds: Odds, settings: Settings) -> str:
    """The odds in a sentence, for the CLI."""
    return (
        f"chance a guesser finds a live code within a year: {_percent(odds.per_shopper)} per shopper at "
        f"{settings.failed_code_limit}; {_percent(odds.below_alarm)} for many shoppers together staying under "
        f"the shop-wide alert ({settings.guessing_alert}); {_percent(odds.per_unnamed_key)} through a server key "
        f"that names no shopper ({settings.failed_code_limit_unnamed})"
    )


def _percent(p: float) -> str:
    return f"{p * 100:.3g}%"


def raise_alert(engine: Engine, *, shop_id: int, failures: int, limits: GuessLimits, now: datetime) -> None:
    """Open the shop's `guessing` alert, or count one more sighting of the open one (called
    only when a failure crosses the threshold: once per window, not on every failure)."""
    window = limits.alarm.get_expiry()
    values = {
        "shop_id": shop_id,
        "kind": ALERT_KIND,
        "message": f"{failures} wrong codes tried within {_duration(window)} across the shop: someone may be guessing codes",
        "details": {"failures": failures, "threshold": limits.alarm.amount, "window_seconds": window},
        "open_key": f"{ALERT_KIND}:{shop_id}",
    }
    with session_scope(engine) as session:
        claimstore.raise_alert(session.connection(), values, now)


def _duration(seconds: int) -> str:
    for size, unit in ((86400, "day"), (3600, "hour"), (60, "minute")):
        if seconds % size == 0:
            n = seconds // size
            return f"{n} {unit}" if n == 1 else f"{n} {unit}s"
    return f"{seconds} seconds"
