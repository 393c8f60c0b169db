"""Platform credentials at rest: encrypted, rotatable, never shown."""

from __future__ import annotations

from dataclasses import replace

import pytest
from sqlalchemy import Engine

from connectors.base import Credentials
from connectors.errors import AuthError
from plugin.platforms import installs
from plugin.platforms.connections import shop_credentials
from plugin.settings import Secret, Settings
from plugin.shops import tokens
from plugin.store.db import session_scope
from plugin.store.models import Shop


def test_a_token_round_trips_and_is_not_readable_at_rest(settings: Settings) -> None:
    stored = tokens.encrypt(settings, "shpat_secret_value", {"consumer_key": "ck_1"})
    assert "shpat_secret_value" not in stored and "ck_1" not in stored
    back = tokens.decrypt(settings, stored)
    assert (back.access_token, dict(back.extra)) == ("shpat_secret_value", {"consumer_key": "ck_1"})
    assert "shpat_secret_value" not in repr(back) and "ck_1" not in repr(back)


def test_rotation_keeps_old_tokens_readable_and_re_encrypts_them(settings: Settings) -> None:
    old = tokens.encrypt(settings, "tok")
    rotated_settings = replace(
        settings, token_key=Secret("a-brand-new-secret-key-0123456789"), old_token_keys=(settings.secret_key,)
    )
    assert tokens.decrypt(rotated_settings, old).access_token == "tok"
    fresh = tokens.rotate(rotated_settings, old)
    assert tokens.decrypt(replace(rotated_settings, old_token_keys=()), fresh).access_token == "tok"
    with pytest.raises(tokens.UnreadableToken):  # without the old key the old value is lost
        tokens.decrypt(replace(rotated_settings, old_token_keys=()), old)


def test_a_tampered_token_is_refused(settings: Settings) -> None:
    stored = tokens.encrypt(settings, "tok")
    with pytest.raises(tokens.UnreadableToken):
        tokens.decrypt(settings, stored[:-4] + "AAAA")


def test_the_connection_decrypts_and_an_uninstalled_shop_has_none(engine: Engine, settings: Settings) -> None:
    credentials = Credentials(shop_domain="a.myshopify.com", access_token="shpat_1", scopes=("write_discounts",))
    with session_scope(engine) as session:
        shop = installs.save_install(session, settings, platform="shopify", credentials=credentials)
        assert shop.id is not None
        got = shop_credentials(settings, shop)
        assert (got.shop_domain, got.access_token, got.scopes) == ("a.myshopify.com", "shpat_1", ("write_discounts",))
        installs.mark_uninstalled(session, shop.id, actor="test")
        session.refresh(shop)
        assert shop.access_token_encrypted is None
        with pytest.raises(AuthError):
            shop_credentials(settings, session.get_one(Shop, shop.id))
