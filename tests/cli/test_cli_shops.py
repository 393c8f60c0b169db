"""`couponry shops connect woocommerce`: keys made by hand, tried against the store, stored encrypted."""

from __future__ import annotations

import json

import respx
from click.testing import CliRunner
from sqlalchemy import Engine
from sqlmodel import col, select

from plugin.cli import main
from plugin.platforms.installs import REGISTER_WEBHOOKS
from plugin.settings import Settings
from plugin.shops import tokens
from plugin.store.db import make_engine, session_scope
from plugin.store.models import Job, Shop
from tests.cli.test_cli import cli, cli_database_url  # noqa: F401  (fixtures)
from tests.connectors.fakes.woocommerce import FakeWooCommerce


def test_connect_woocommerce_with_keys(cli: CliRunner, cli_database_url: str) -> None:  # noqa: F811
    fake = FakeWooCommerce()
    with respx.mock() as router:
        fake.install(router, "coupons")
        args = ["shops", "connect", "woocommerce", "--url", "shop.example", "--key", fake.consumer_key]
        result = cli.invoke(main, [*args, "--secret", fake.consumer_secret], catch_exceptions=False)
        assert result.exit_code == 0, result.output
        refused = cli.invoke(main, [*args, "--secret", "cs_wrong"], catch_exceptions=False)
    assert refused.exit_code == 1 and "refused the keys" in refused.output
    answer = json.loads(result.output)
    assert answer["domain"] == fake.store_url and fake.consumer_secret not in result.output
    engine: Engine = make_engine(cli_database_url)
    try:
        with session_scope(engine) as session:
            shop = session.exec(select(Shop).where(col(Shop.platform) == "woocommerce")).one()
            assert shop.access_token_encrypted and fake.consumer_secret not in shop.access_token_encrypted
            stored = tokens.decrypt(Settings.from_env(), shop.access_token_encrypted)
            assert stored.access_token == fake.consumer_secret and stored.extra["consumer_key"] == fake.consumer_key
            assert stored.extra["webhook_secret"]
            assert session.exec(select(Job.kind).where(col(Job.shop_id) == shop.id)).all() == [REGISTER_WEBHOOKS]
    finally:
        engine.dispose()
