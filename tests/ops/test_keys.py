"""Keys per purpose: the token key and the signing key rotate on their own; a token-key
rotation re-encrypts stored rows (resumably); a retired signing key keeps emailed links
working for its grace period, and no longer."""

from __future__ import annotations

import contextlib
from dataclasses import replace
from datetime import timedelta
from urllib.parse import urlsplit

import pytest
from click.testing import CliRunner
from sqlalchemy import Engine, text
from sqlmodel import select
from starlette.testclient import TestClient

from plugin import keyring
from plugin.cli import main
from plugin.errors import ConfigError
from plugin.settings import RetiredKey, Secret, Settings
from plugin.shops import tokens
from plugin.store.db import make_engine, session_scope
from plugin.store.models import Shop, utcnow
from plugin.web.admin import context as admin_context
from tests.cli.test_cli import _ok, cli, cli_database_url  # noqa: F401  (fixtures)
from tests.cli.test_cli_distribution import campaign

OLD = Secret("old-key-0123456789-abcdefghijklmnopq")
NEW = Secret("new-key-0123456789-abcdefghijklmnopq")
CLI_SECRET = "test-secret-0123456789-abcdefghijklm"  # the `cli` fixture's COUPONRY_SECRET_KEY


# --- settings ------------------------------------------------------------------------------------


def _env(**values: str) -> dict[str, str]:
    return {"DATABASE_URL": "postgresql://h/db", "COUPONRY_SECRET_KEY": CLI_SECRET, **values}


def test_each_key_defaults_to_the_secret_key_so_an_upgrade_keeps_links_and_tokens() -> None:
    settings = Settings.from_env(_env())
    assert keyring.token_keys(settings) == (CLI_SECRET,)
    assert keyring.signing_keys(settings, utcnow()) == [CLI_SECRET]


def test_the_keys_and_their_retired_ones_are_read_from_the_environment() -> None:
    settings = Settings.from_env(
        _env(
            COUPONRY_TOKEN_KEY=str(NEW),
            COUPONRY_OLD_TOKEN_KEYS=str(OLD),
            COUPONRY_OLD_SECRET_KEYS=CLI_SECRET,  # the earlier name of the old token keys
            COUPONRY_SIGNING_KEY=str(NEW),
            COUPONRY_OLD_SIGNING_KEYS=f"{OLD}@2026-12-01",
            COUPONRY_SIGNING_KEY_GRACE_DAYS="30",
        )
    )
    assert keyring.token_keys(settings) == (str(NEW), str(OLD), CLI_SECRET)
    retired = settings.old_signing_keys[0]
    assert (retired.key, retired.retired_at.isoformat()) == (OLD, "2026-12-01T00:00:00+00:00")
    assert keyring.signing_keys(settings, retired.retired_at + timedelta(days=29)) == [str(OLD), str(NEW)]
    assert keyring.signing_keys(settings, retired.retired_at + timedelta(days=30)) == [str(NEW)]


@pytest.mark.parametrize(
    ("values", "says"),
    [
        ({"COUPONRY_OLD_SIGNING_KEYS": str(OLD)}, "KEY@DATE"),
        ({"COUPONRY_OLD_SIGNING_KEYS": f"{OLD}@yesterday"}, "entry 1 must be KEY@DATE"),
        ({"COUPONRY_TOKEN_KEY": "short"}, "COUPONRY_TOKEN_KEY must be at least 32"),
        ({"COUPONRY_SIGNING_KEY": "short"}, "COUPONRY_SIGNING_KEY must be at least 32"),
        ({"COUPONRY_SIGNING_KEY_GRACE_DAYS": "-1"}, "must not be negative"),
    ],
)
def test_a_bad_key_setting_is_refused_in_one_line(values: dict[str, str], says: str) -> None:
    with pytest.raises(ConfigError, match=says) as refused:
        Settings.from_env(_env(**values))
    assert str(OLD) not in str(refused.value)  # never echoes a key


# --- the token key -------------------------------------------------------------------------------


def _shops_with_credentials(engine: Engine, settings: Settings, *, under: dict[str, Secret | None]) -> dict[str, int]:
    """One shop per entry, its credentials encrypted under that key (None: garbage no key opens)."""
    ids: dict[str, int] = {}
    with session_scope(engine) as session:
        for domain, key in under.items():
            stored = "gAAAAA-not-a-token" if key is None else tokens.encrypt(replace(settings, token_key=key), f"tok-{domain}")
            shop = Shop(platform="shopify", domain=domain, access_token_encrypted=stored)
            session.add(shop)
            session.flush()
            assert shop.id is not None
            ids[domain] = shop.id
    return ids


def _readable_with_only(engine: Engine, settings: Settings, key: Secret) -> dict[str, str]:
    only = replace(settings, token_key=key, old_token_keys=())
    with session_scope(engine) as session:
        shops = session.exec(select(Shop).where(Shop.access_token_encrypted != None)).all()  # noqa: E711
        readable = {}
        for shop in shops:
            with contextlib.suppress(tokens.UnreadableToken):
                readable[shop.domain] = tokens.decrypt(only, str(shop.access_token_encrypted)).access_token
        return readable


def test_rotate_token_key_re_encrypts_every_row_and_is_idempotent(
    cli: CliRunner,  # noqa: F811
    cli_database_url: str,  # noqa: F811
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    _ok(cli, "campaigns", "list")  # the CLI creates (SQLite) or checks (PostgreSQL) the schema
    engine = make_engine(cli_database_url)
    settings = Settings(database_url=cli_database_url, secret_key=Secret(CLI_SECRET))
    _shops_with_credentials(engine, settings, under={"a.myshopify.com": OLD, "b.myshopify.com": OLD, "c.myshopify.com": NEW})
    monkeypatch.setenv("COUPONRY_TOKEN_KEY", str(NEW))
    monkeypatch.setenv("COUPONRY_OLD_TOKEN_KEYS", str(OLD))
    assert _ok(cli, "keys", "rotate-token-key").strip() == "re-encrypted 2, already current 1, unreadable 0"
    # the old key can go now: every token opens with the new key alone
    assert _readable_with_only(engine, settings, NEW) == {
        "a.myshopify.com": "tok-a.myshopify.com",
        "b.myshopify.com": "tok-b.myshopify.com",
        "c.myshopify.com": "tok-c.myshopify.com",
    }
    assert _readable_with_only(engine, settings, OLD) == {}
    assert _ok(cli, "keys", "rotate-token-key").strip() == "re-encrypted 0, already current 3, unreadable 0"
    engine.dispose()


def test_rotate_token_key_names_the_shops_it_cannot_read(
    cli: CliRunner,  # noqa: F811
    cli_database_url: str,  # noqa: F811
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    _ok(cli, "campaigns", "list")
    engine = make_engine(cli_database_url)
    settings = Settings(database_url=cli_database_url, secret_key=Secret(CLI_SECRET))
    ids = _shops_with_credentials(engine, settings, under={"a.myshopify.com": OLD, "lost.myshopify.com": None})
    monkeypatch.setenv("COUPONRY_TOKEN_KEY", str(NEW))
    monkeypatch.setenv("COUPONRY_OLD_TOKEN_KEYS", str(OLD))
    result = cli.invoke(main, ["keys", "rotate-token-key"])
    assert result.exit_code == 1
    assert "re-encrypted 1, already current 0, unreadable 1" in result.stdout
    assert f"shops {ids['lost.myshopify.com']} hold credentials no configured token key decrypts" in result.stderr
    assert str(OLD) not in result.output and str(NEW) not in result.output
    engine.dispose()


def test_an_interrupted_rotation_keeps_its_work_and_a_rerun_finishes(engine: Engine, settings: Settings) -> None:
    domains = [f"s{n}.myshopify.com" for n in range(5)]
    _shops_with_credentials(engine, settings, under=dict.fromkeys(domains, OLD))
    rotating = replace(settings, token_key=NEW, old_token_keys=(OLD,))
    real_rotate, calls = tokens.rotate, 0

    def dies_on_the_fourth(settings_: Settings, stored: str) -> str:
        nonlocal calls
        calls += 1
        if calls == 4:
            raise KeyboardInterrupt  # the operator's ^C, or a killed process
        return real_rotate(settings_, stored)

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(tokens, "rotate", dies_on_the_fourth)
        with pytest.raises(KeyboardInterrupt):
            tokens.rotate_all(engine, rotating, batch=2)
    # the first batch (2 rows) committed; the interrupted one rolled back whole
    assert len(_readable_with_only(engine, settings, NEW)) == 2
    report = tokens.rotate_all(engine, rotating, batch=2)
    assert (report.rotated, report.current, report.unreadable) == (3, 2, [])
    assert sorted(_readable_with_only(engine, settings, NEW)) == domains


def test_a_row_an_install_rewrote_meanwhile_is_not_overwritten(engine: Engine, settings: Settings) -> None:
    if engine.dialect.name == "sqlite":
        pytest.skip("SQLite's single writer: the sweep's transaction holds the write lock the install would wait for")
    ids = _shops_with_credentials(engine, settings, under={"a.myshopify.com": OLD})
    rotating = replace(settings, token_key=NEW, old_token_keys=(OLD,))
    reinstalled = tokens.encrypt(rotating, "tok-after-reinstall")
    real_rotate = tokens.rotate

    def an_install_lands_meanwhile(settings_: Settings, stored: str) -> str:
        fresh = real_rotate(settings_, stored)
        # what the sweep read is replaced, in another transaction, before the sweep writes
        with engine.begin() as conn:
            conn.execute(
                text("UPDATE shop SET access_token_encrypted = :v WHERE id = :i"), {"v": reinstalled, "i": ids["a.myshopify.com"]}
            )
        return fresh

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(tokens, "rotate", an_install_lands_meanwhile)
        report = tokens.rotate_all(engine, rotating)
    assert (report.rotated, report.current) == (0, 1)
    assert _readable_with_only(engine, settings, NEW) == {"a.myshopify.com": "tok-after-reinstall"}


def test_rotating_the_token_key_leaves_links_alone_and_the_signing_key_leaves_tokens_alone(settings: Settings) -> None:
    stored = tokens.encrypt(settings, "tok")
    new_signing = replace(settings, signing_key=NEW)
    assert tokens.decrypt(new_signing, stored).access_token == "tok"  # tokens don't care about the signing key
    new_token = replace(settings, token_key=NEW, old_token_keys=(settings.secret_key,))
    cookie = admin_context.session_cookie_value(settings, 1, 0)
    assert keyring.signing_keys(new_token, utcnow()) == keyring.signing_keys(settings, utcnow())
    assert admin_context._signer(new_token, "session").loads(cookie)["user"] == 1


# --- the signing key -----------------------------------------------------------------------------


def _open(database_url: str, settings: Settings, link: str) -> int:
    from plugin.web.app import create_app

    engine = make_engine(database_url)
    try:
        with TestClient(create_app(settings, engine=engine)) as client:
            return client.get(urlsplit(link).path).status_code
    finally:
        engine.dispose()


def test_an_emailed_claim_link_works_through_the_grace_period_and_not_after(
    cli: CliRunner,  # noqa: F811
    cli_database_url: str,  # noqa: F811
) -> None:
    campaign_id = campaign(cli, "Winter")
    link = _ok(cli, "distribution", "claim", "--campaign", campaign_id, "ann@example.com").splitlines()[1]
    before = Settings(database_url=cli_database_url, secret_key=Secret(CLI_SECRET), run_worker_in_process=False)
    assert _open(cli_database_url, before, link) == 200
    # the signing key is rotated: the old one retired 89 days ago, with the default 90-day grace
    now = utcnow()
    rotated = replace(before, signing_key=NEW, old_signing_keys=(RetiredKey(Secret(CLI_SECRET), now - timedelta(days=89)),))
    assert _open(cli_database_url, rotated, link) == 200
    lapsed = replace(rotated, old_signing_keys=(RetiredKey(Secret(CLI_SECRET), now - timedelta(days=90, minutes=1)),))
    assert _open(cli_database_url, lapsed, link) == 403
    assert _open(cli_database_url, replace(rotated, signing_key_grace_days=10), link) == 403
    # links minted after the rotation are signed with the new key, and verify without the old one
    fresh = _ok_with(
        cli, {"COUPONRY_SIGNING_KEY": str(NEW)}, "distribution", "claim", "--campaign", campaign_id, "bo@example.com"
    )
    assert fresh != link and _open(cli_database_url, replace(rotated, old_signing_keys=()), fresh) == 200


def _ok_with(cli: CliRunner, env: dict[str, str], *args: str) -> str:  # noqa: F811
    result = cli.invoke(main, list(args), env=env, catch_exceptions=False)
    assert result.exit_code == 0, result.output
    return result.stdout.splitlines()[1]


def test_sessions_are_signed_with_the_new_key_and_old_ones_last_the_grace_period(settings: Settings) -> None:
    old_cookie = admin_context.session_cookie_value(settings, 7, 0)
    now = utcnow()
    retired = RetiredKey(settings.secret_key, now - timedelta(days=1))
    rotated = replace(settings, signing_key=NEW, old_signing_keys=(retired,))
    assert admin_context._signer(rotated, "session").loads(old_cookie)["user"] == 7
    new_cookie = admin_context.session_cookie_value(rotated, 8, 0)
    # signed with the new key: it verifies once the old key is gone
    assert admin_context._signer(replace(rotated, old_signing_keys=()), "session").loads(new_cookie)["user"] == 8
    from itsdangerous import BadSignature

    with pytest.raises(BadSignature):
        admin_context._signer(replace(rotated, signing_key_grace_days=0), "session").loads(old_cookie)


def test_pull_urls_and_setup_links_follow_the_signing_key_and_its_grace(settings: Settings) -> None:
    from itsdangerous import BadSignature

    from plugin.distribution import claimlinks
    from plugin.shops import users

    now = utcnow()
    grant = claimlinks.PullGrant(shop_id=1, campaign_id=2, key_prefix="abc", expires_at=now + timedelta(days=30))
    old_pull = claimlinks.pull_token(keyring.signing_key(settings), grant)
    old_setup = users.setup_token(settings, 1)
    in_grace = replace(settings, signing_key=NEW, old_signing_keys=(RetiredKey(settings.secret_key, now - timedelta(days=1)),))
    lapsed = replace(in_grace, signing_key_grace_days=1)
    assert claimlinks.read_pull_token(keyring.signing_keys(in_grace, now), old_pull, now=now).campaign_id == 2
    with pytest.raises(claimlinks.BadLink):
        claimlinks.read_pull_token(keyring.signing_keys(lapsed, now), old_pull, now=now)
    assert users._setup_signer(in_grace).loads(old_setup)["shop"] == 1
    with pytest.raises(BadSignature):
        users._setup_signer(lapsed).loads(old_setup)
