"""Connectors to shop platforms and messaging providers, looked up by their `name`.

The registry maps each name to "module:Class" and imports the module on first use, so a
process only loads the connectors it talks to.
"""

from __future__ import annotations

import importlib
from typing import Any

SHOP_CONNECTORS: dict[str, str] = {
    "sandbox": "connectors.sandbox:SandboxConnector",
    "shopify": "connectors.shopify:ShopifyConnector",
    "woocommerce": "connectors.woocommerce:WooCommerceConnector",
    "bigcommerce": "connectors.bigcommerce:BigCommerceConnector",
}

MESSAGING_CONNECTORS: dict[str, str] = {
    "klaviyo": "connectors.klaviyo:KlaviyoConnector",
    "mailchimp": "connectors.mailchimp:MailchimpConnector",
    "braze": "connectors.braze:BrazeConnector",
    "twilio": "connectors.twilio:TwilioConnector",
    "sendgrid": "connectors.sendgrid:SendGridConnector",
}


class UnknownConnector(LookupError):
    def __init__(self, name: str, kind: str) -> None:
        super().__init__(f"no {kind} connector named {name!r}")


def _load(path: str) -> Any:
    module_name, _, class_name = path.partition(":")
    return getattr(importlib.import_module(module_name), class_name)


def shop_connector_class(name: str) -> Any:
    """The ShopConnector class registered under `name`."""
    try:
        return _load(SHOP_CONNECTORS[name])
    except KeyError:
        raise UnknownConnector(name, "shop platform") from None


def messaging_connector_class(name: str) -> Any:
    """The MessagingConnector class registered under `name`."""
    try:
        return _load(MESSAGING_CONNECTORS[name])
    except KeyError:
        raise UnknownConnector(name, "messaging") from None
