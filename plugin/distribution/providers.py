"""The messaging providers of this installation, as the admin's Settings page shows them.

Providers are configured by the operator in the environment (`COUPONRY_<PROVIDER>_<OPTION>`,
plugin.settings), for every shop of the installation; connectors declare no settings form, so
the page shows what is set, secrets masked, and offers a "test connection": one cheap
authenticated read through the provider's connector (`check_connection`).
"""

from __future__ import annotations

from dataclasses import dataclass

import httpx

from connectors import MESSAGING_CONNECTORS
from connectors.errors import ConnectorError
from plugin.distribution.pushes import messaging_connector
from plugin.errors import NotFound
from plugin.settings import Settings
from plugin.store.models import Shop

SECRET_WORDS = ("key", "token", "secret", "password")  # an option whose name holds one is masked


@dataclass(frozen=True)
class Provider:
    name: str
    configured: bool
    options: tuple[tuple[str, str], ...]  # (option, value shown: masked when it is a secret)
    can_check: bool  # its connector has a cheap authenticated read


@dataclass(frozen=True)
class CheckResult:
    ok: bool
    message: str


def mask(option: str, value: str) -> str:
    """A secret shows only its last four characters, and only when it is long enough to keep the rest hidden."""
    if not any(word in option for word in SECRET_WORDS):
        return value
    return "••••" + value[-4:] if len(value) >= 16 else "••••"


def _can_check(name: str) -> bool:
    from connectors import messaging_connector_class

    return callable(getattr(messaging_connector_class(name), "check_connection", None))


def providers(settings: Settings) -> list[Provider]:
    """Every messaging connector we ship, configured or not, in name order."""
    found = []
    for name in sorted(MESSAGING_CONNECTORS):
        options = settings.connector_config.get(name) or {}
        shown = tuple((k, mask(k, v)) for k, v in sorted(options.items()))
        found.append(Provider(name=name, configured=bool(options), options=shown, can_check=_can_check(name)))
    return found


async def check_provider(settings: Settings, http: httpx.AsyncClient, name: str, shop: Shop) -> CheckResult:
    """Call the provider once with the configured credentials: what it answered, or why it refused."""
    if name not in MESSAGING_CONNECTORS:
        raise NotFound(f"no messaging provider named {name!r}", reason="unknown_provider")
    if not settings.connector_config.get(name):
        return CheckResult(False, f"{name} is not configured: set COUPONRY_{name.upper()}_* and restart")
    try:
        connector = messaging_connector(settings, http, name, shop)
        check = getattr(connector, "check_connection", None)
        if check is None:
            return CheckResult(False, f"{name} has no read-only call to test with; its first push will tell")
        answer = await check()
    except ConnectorError as exc:
        return CheckResult(False, f"{name} refused: {exc}")
    return CheckResult(True, f"connected: {answer}")
