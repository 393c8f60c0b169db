"""The `couponry` command line, end to end on a real database."""

from __future__ import annotations

import csv
import gc
import io
import json
import socket
from pathlib import Path

import pytest
from click.testing import CliRunner
from sqlalchemy import Engine

from plugin.cli import main
from plugin.runtime import YOUNG_THRESHOLD


@pytest.fixture
def cli_database_url(tmp_path: Path, postgres_engine: Engine | None, request: pytest.FixtureRequest) -> str:
    """PostgreSQL: the clean test database. SQLite: a new file the CLI migrates itself."""
    if postgres_engine is not None:
        request.getfixturevalue("engine")  # truncates the tables
        return postgres_engine.url.render_as_string(hide_password=False)
    return f"sqlite:///{tmp_path / 'cli.db'}"


@pytest.fixture
def cli(cli_database_url: str, monkeypatch: pytest.MonkeyPatch) -> CliRunner:
    monkeypatch.setenv("DATABASE_URL", cli_database_url)
    monkeypatch.setenv("COUPONRY_SECRET_KEY", "test-secret-0123456789-abcdefghijklm")
    return CliRunner()


def _ok(cli: CliRunner, *args: str) -> str:
    result = cli.invoke(main, list(args), catch_exceptions=False)
    assert result.exit_code == 0, result.output + (result.stderr if result.stderr_bytes else "")
    return result.stdout


def test_campaign_generate_export_import_round_trip(cli: CliRunner, tmp_path: Path) -> None:
    campaign_id = _ok(cli, "campaigns", "create", "--name", "Black Friday", "--pattern", "BF-#####-#####", "--check-chars", "1")
    campaign_id = campaign_id.strip()
    assert campaign_id.isdigit()
    generated = json.loads(_ok(cli, "codes", "generate", "--campaign", campaign_id, "--count", "250"))
    assert generated["created"] == 250

    out = tmp_path / "codes.csv"
    _ok(cli, "codes", "export", "--campaign", campaign_id, "--output", str(out))
    rows = list(csv.DictReader(io.StringIO(out.read_text())))
    assert len(rows) == 250 and all(r["code"].startswith("BF-") for r in rows)

    partner = tmp_path / "partner.csv"
    partner.write_text("code\nPARTNER-0001\npartner-0002\n")
    imported = json.loads(_ok(cli, "codes", "import", "--campaign", campaign_id, str(partner)))
    assert imported["imported"] == 2
    listing = _ok(cli, "campaigns", "list")
    assert f"{campaign_id}\tBlack Friday\tdraft\t252 codes" in listing


def test_campaigns_show_says_where_the_campaign_stands_on_the_platform(cli: CliRunner) -> None:
    campaign_id = _ok(cli, "campaigns", "create", "--name", "Spring").strip()
    _ok(cli, "codes", "generate", "--campaign", campaign_id, "--count", "3")
    shown = json.loads(_ok(cli, "campaigns", "show", campaign_id))
    assert (shown["name"], shown["codes"]) == ("Spring", 3)
    assert shown["platform"] == {
        "platform": "sandbox",
        "discount_id": None,  # nothing pushed yet
        "codes": {"pending": 3},
        "last_follow": None,
        "last_error": None,
    }
    missing = cli.invoke(main, ["campaigns", "show", "999999"])
    assert missing.exit_code == 1 and "does not exist" in missing.output


def test_codes_import_binds_codes_to_the_people_its_columns_name(cli: CliRunner, tmp_path: Path) -> None:
    campaign_id = _ok(cli, "campaigns", "create", "--name", "Loyal").strip()
    bad = tmp_path / "bad.csv"
    bad.write_text("code,email,customer_id\nLOYAL1,ann@example.com,\nLOYAL2,not-an-email,\n")
    rejected = cli.invoke(main, ["codes", "import", "--campaign", campaign_id, str(bad)])
    assert rejected.exit_code == 1 and "row 3: 'not-an-email' is not an email address" in rejected.output
    good = tmp_path / "good.csv"
    good.write_text("code,email,customer_id\nLOYAL1,ann@example.com,\nLOYAL2,,c-2\n")
    assert json.loads(_ok(cli, "codes", "import", "--campaign", campaign_id, str(good)))["imported"] == 2
    out = tmp_path / "assignments.csv"
    _ok(cli, "distribution", "export", "--campaign", campaign_id, "--output", str(out))
    rows = {r["code"]: (r["email"], r["customer_id"]) for r in csv.DictReader(io.StringIO(out.read_text()))}
    assert rows == {"LOYAL1": ("ann@example.com", ""), "LOYAL2": ("", "c-2")}


def test_bad_input_exits_non_zero_with_a_clear_message(cli: CliRunner, tmp_path: Path) -> None:
    campaign_id = _ok(cli, "campaigns", "create", "--name", "Digits", "--alphabet", "numeric", "--length", "4").strip()
    refused = cli.invoke(main, ["codes", "generate", "--campaign", campaign_id, "--count", "20000"])
    assert refused.exit_code == 1
    assert "20,000" in refused.output and "Traceback" not in refused.output

    missing = cli.invoke(main, ["codes", "generate", "--campaign", "999", "--count", "5"])
    assert missing.exit_code == 1 and "campaign 999 does not exist" in missing.output

    bad_format = cli.invoke(main, ["campaigns", "create", "--name", "x", "--length", "2"])
    assert bad_format.exit_code == 1 and "invalid code format" in bad_format.output

    dupes = tmp_path / "dupes.csv"
    dupes.write_text("code\nABC123\nabc-123\n")
    rejected = cli.invoke(main, ["codes", "import", "--campaign", campaign_id, str(dupes)])
    assert rejected.exit_code == 1 and "row 3: duplicate of row 2" in rejected.output

    zero = cli.invoke(main, ["codes", "generate", "--campaign", campaign_id, "--count", "0"])
    assert zero.exit_code == 2


def test_keys_create_prints_a_working_key(cli: CliRunner, cli_database_url: str) -> None:
    from sqlmodel import Session

    from plugin.shops.apikeys import authenticate
    from plugin.store.db import make_engine

    key = _ok(cli, "keys", "create", "--name", "checkout", "--scope", "checkout").strip()
    assert key.startswith("cpy_")
    engine = make_engine(cli_database_url)
    with Session(engine) as session:
        found = authenticate(session, key)
        assert found is not None and found.scopes == "checkout"
    prefix = key.split("_")[1]
    assert "revoked" in _ok(cli, "keys", "revoke", prefix)
    with Session(engine) as session:
        assert authenticate(session, key) is None
    engine.dispose()


def test_keys_create_makes_storefront_keys_alone(cli: CliRunner) -> None:
    assert _ok(cli, "keys", "create", "--name", "shop front", "--scope", "storefront").startswith("cpy_")
    mixed = cli.invoke(main, ["keys", "create", "--scope", "storefront", "--scope", "checkout"])
    assert mixed.exit_code != 0 and "storefront" in mixed.output


def test_export_to_stdout_streams_csv(cli: CliRunner) -> None:
    campaign_id = _ok(cli, "campaigns", "create", "--name", "S").strip()
    _ok(cli, "codes", "generate", "--campaign", campaign_id, "--count", "3")
    text = _ok(cli, "codes", "export", "--campaign", campaign_id)
    assert len(list(csv.DictReader(io.StringIO(text)))) == 3


def test_shop_option_acts_on_an_installed_shop_and_refuses_unknown_ones(cli: CliRunner, cli_database_url: str) -> None:
    from sqlmodel import Session, select

    from plugin.store.db import make_engine
    from plugin.store.models import Campaign, Shop

    _ok(cli, "campaigns", "list")  # creates the local shop and the schema
    engine = make_engine(cli_database_url)
    with Session(engine) as session:
        session.add(Shop(platform="shopify", domain="acme.myshopify.com"))
        session.commit()
    _ok(cli, "--shop", "acme.myshopify.com", "campaigns", "create", "--name", "Acme")
    with Session(engine) as session:
        campaign = session.exec(select(Campaign)).one()
        shop = session.get(Shop, campaign.shop_id)
        assert shop is not None and shop.platform == "shopify"
    engine.dispose()
    unknown = cli.invoke(main, ["--shop", "nope.myshopify.com", "campaigns", "list"])
    assert unknown.exit_code == 1 and "no shop with domain 'nope.myshopify.com'" in unknown.output


def test_redemptions_list_and_rollback(cli: CliRunner, cli_database_url: str) -> None:
    from sqlmodel import Session, col, select

    from plugin.checkout import redemptions as service
    from plugin.store.db import make_engine, session_scope
    from plugin.store.models import Code, utcnow

    campaign_id = _ok(
        cli, "campaigns", "create", "--name", "R", "--rules", '{"currency": "USD", "discount": {"type": "fixed", "amount": 500}}'
    ).strip()
    _ok(cli, "codes", "generate", "--campaign", campaign_id, "--count", "2")
    engine = make_engine(cli_database_url)
    with Session(engine) as session:
        code = session.exec(select(Code.code).where(col(Code.campaign_id) == int(campaign_id))).first()
        shop_id = session.exec(select(Code.shop_id)).first()
    assert code is not None and shop_id is not None
    with session_scope(engine) as session:
        service.record_redemption(session, shop_id=shop_id, code=code, order_id="o-1", now=utcnow(), amount=500)
    engine.dispose()
    listing = _ok(cli, "redemptions", "list", "--campaign", campaign_id)
    assert f"order o-1\t{code}\t500 USD\tactive\twebhook" in listing
    rid = listing.split("\t")[0]
    assert _ok(cli, "redemptions", "rollback", rid, "--reason", "cancelled").strip() == f"{rid}\trolled_back"
    assert "rolled_back" in _ok(cli, "redemptions", "list", "--status", "rolled_back")
    assert _ok(cli, "redemptions", "list", "--flagged").strip() == ""


def test_serve_address_becomes_the_public_url_unless_configured() -> None:
    from plugin.cli import serve_settings
    from plugin.settings import Settings

    base = Settings.from_env({"COUPONRY_SECRET_KEY": "k" * 32})
    moved = serve_settings(base, None, 8766, {})
    assert (moved.port, moved.public_url) == (8766, "http://127.0.0.1:8766")
    public = Settings.from_env({"COUPONRY_SECRET_KEY": "k" * 32, "COUPONRY_PUBLIC_URL": "https://coupons.example.com"})
    kept = serve_settings(public, "0.0.0.0", 9000, {"COUPONRY_PUBLIC_URL": "https://coupons.example.com"})
    assert (kept.host, kept.port, kept.public_url) == ("0.0.0.0", 9000, "https://coupons.example.com")


def test_serve_runs_the_app_on_the_asyncio_loop(cli: CliRunner, monkeypatch: pytest.MonkeyPatch, gc_state: None) -> None:
    """uvloop answers some connections far later than others under load (bench/loadgen.py)."""
    import uvicorn

    from plugin.web.hotpaths import App

    calls: list[tuple[uvicorn.Config, list[object]]] = []

    def run(server: uvicorn.Server, sockets: list[socket.socket] | None = None) -> None:
        calls.append((server.config, [s.getsockname() for s in sockets or []]))
        server.started = True

    monkeypatch.setattr(uvicorn.Server, "run", run)
    with socket.socket() as probe:  # a free port
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    _ok(cli, "serve", "--port", str(port))
    [(config, [address])] = calls
    assert isinstance(config.app, App) and config.loop == "asyncio"
    assert address == ("127.0.0.1", port)  # served on the socket `serve` bound first
    # a deadline for each request, a concurrency limit, tokens kept out of the access log
    assert isinstance(config.http, type) and config.http.request_timeout == 20  # type: ignore[attr-defined]
    assert config.limit_concurrency == 1000
    assert config.proxy_headers is False  # X-Forwarded-For is believed only from COUPONRY_TRUSTED_PROXIES, by the app
    assert config.log_config["loggers"]["uvicorn.access"]["filters"] == ["redact_tokens"]  # type: ignore[index]
    assert gc.get_threshold()[0] == YOUNG_THRESHOLD and gc.get_freeze_count() > 0  # settle_heap ran


def test_one_code_show_void_extend_reassign(cli: CliRunner, tmp_path: Path) -> None:
    rules = '{"discount": {"type": "percentage", "percent": "10"}}'
    campaign_id = _ok(cli, "campaigns", "create", "--name", "One", "--pattern", "ON-##########", "--rules", rules).strip()
    _ok(cli, "codes", "generate", "--campaign", campaign_id, "--count", "2")
    out = tmp_path / "codes.csv"
    _ok(cli, "codes", "export", "--campaign", campaign_id, "--output", str(out))
    first, second = (r["code"] for r in csv.DictReader(io.StringIO(out.read_text())))
    shown = _ok(cli, "codes", "show", first.lower().replace("-", " "))
    assert shown.startswith(f"{first}\tcampaign {campaign_id}\tactive") and "\tissued\t" in shown
    later = "2099-01-31T23:59:59Z"
    assert "\textended\t" in _ok(cli, "codes", "extend", first, "--expires-at", later)
    assert "expires 2099-01-31T23:59:59+00:00" in _ok(cli, "codes", "show", first)
    moved = _ok(cli, "codes", "reassign", first, "--recipient", "Ann@Example.com")
    assert "recipient: ann@example.com" in moved and "actor=cli" in moved
    taken = cli.invoke(main, ["codes", "reassign", second, "--recipient", "ann@example.com"])
    assert taken.exit_code == 1 and "already holds a code" in taken.output and "Traceback" not in taken.output
    voided = _ok(cli, "codes", "void", second, "--reason", "leaked")
    assert "\tvoided\t" in voided
    assert _ok(cli, "codes", "void", second) == voided  # twice: one void, the same story
    past = cli.invoke(main, ["codes", "extend", first, "--expires-at", "2001-01-01T00:00:00Z"])
    assert past.exit_code == 1 and "must be in the future" in past.output
    unknown = cli.invoke(main, ["codes", "show", "ON-ZZZZZZZZZZ"])
    assert unknown.exit_code == 1 and "no code" in unknown.output


def test_admin_recount_finds_nothing_to_repair_after_ordinary_writes(cli: CliRunner) -> None:
    campaign_id = _ok(cli, "campaigns", "create", "--name", "Figures").strip()
    _ok(cli, "codes", "generate", "--campaign", campaign_id, "--count", "40")
    assert json.loads(_ok(cli, "admin", "recount")) == {"repaired": 0, "changed": []}
    assert f"{campaign_id}\tFigures\tdraft\t40 codes" in _ok(cli, "campaigns", "list")
