"""Failed standalone sign-ins, limited per (shop, email) and per client address, with
plugin.checkout.ratelimit's FailureLimiter over the app's limiter storage (memory by default,
Redis when REDIS_URL is set, so every web process sees the same counts).

A lock holds even for the right password: otherwise a guesser would keep going and learn the
password the moment the answer changed. The (shop, email) keys are those of the accounts the
sign-in could open (an email in two shops, no shop typed: both), so typing a shop's domain
or not never buys extra attempts; an email with no account is counted under its own key."""

from __future__ import annotations

import math
from dataclasses import dataclass

from limits.storage import Storage

from plugin.checkout.ratelimit import FailureLimiter
from plugin.errors import PluginError
from plugin.settings import Settings
from plugin.shops.users import normalise_email

NAMESPACE = "couponry/admin-sign-in"


class TooManySignIns(PluginError):
    status = 429
    reason = "too_many_sign_ins"

    def __init__(self, retry_after: int) -> None:
        minutes = max(1, math.ceil(retry_after / 60))
        super().__init__(
            f"too many failed sign-ins: sign-in is locked for about {minutes} minute{'s' if minutes > 1 else ''}; try again then",
            details={"retry_after": retry_after},
        )
        self.retry_after = retry_after


@dataclass(frozen=True)
class Attempt:
    """The counters one sign-in attempt is checked and charged against."""

    accounts: tuple[str, ...]
    address: str


class SignInLimits:
    def __init__(self, storage: Storage, *, per_account: str, per_address: str, namespace: str = NAMESPACE) -> None:
        self.accounts = FailureLimiter(limit=per_account, storage=storage)
        self.addresses = FailureLimiter(limit=per_address, storage=storage)
        self.namespace = namespace

    @classmethod
    def from_settings(cls, storage: Storage, settings: Settings, namespace: str = NAMESPACE) -> SignInLimits:
        return cls(storage, per_account=settings.sign_in_limit, per_address=settings.sign_in_address_limit, namespace=namespace)

    def attempt(self, shop_ids: list[int], email: str, address: str) -> Attempt:
        email = normalise_email(email)
        accounts = tuple(f"{self.namespace}/shop:{shop_id}/{email}" for shop_id in sorted(set(shop_ids)))
        return Attempt(accounts=accounts or (f"{self.namespace}/no-account/{email}",), address=f"{self.namespace}/ip:{address}")

    def check(self, attempt: Attempt) -> None:
        """TooManySignIns when the address or any account the attempt could open is locked."""
        for verdict in (self.addresses.check(attempt.address), self.accounts.check(*attempt.accounts)):
            if not verdict.allowed:
                raise TooManySignIns(verdict.retry_after)

    def failed(self, attempt: Attempt) -> None:
        self.addresses.record_failure(attempt.address)
        self.accounts.record_failure(*attempt.accounts)
