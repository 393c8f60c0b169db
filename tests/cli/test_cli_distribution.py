"""The distribution, partners and referrals commands, end to end on the CLI's own database."""

from __future__ import annotations

import csv
import io
import json

from click.testing import CliRunner
from sqlmodel import Session, select

from plugin.cli import main
from plugin.store.db import make_engine
from plugin.store.models import ReferrerAddress
from tests.cli.test_cli import _ok, cli, cli_database_url  # noqa: F401  (fixtures)

RULES = json.dumps({"discount": {"type": "percentage", "percent": "10"}})
SHAREABLE = json.dumps({"discount": {"type": "percentage", "percent": "10"}, "usage": {"uses_per_code": None}})


def campaign(runner: CliRunner, name: str, rules: str = RULES, codes: int = 5) -> str:
    campaign_id = _ok(runner, "campaigns", "create", "--name", name, "--rules", rules).strip().split()[0]
    if codes:
        _ok(runner, "codes", "generate", "--campaign", campaign_id, "--count", str(codes))
    return campaign_id


def test_claim_export_pool_and_pull_url(cli: CliRunner) -> None:  # noqa: F811
    campaign_id = campaign(cli, "Spring")
    first = _ok(cli, "distribution", "claim", "--campaign", campaign_id, "Ann@Example.com").splitlines()
    again = _ok(cli, "distribution", "claim", "--campaign", campaign_id, "ann@example.com").splitlines()
    assert first == again and first[0].startswith("ann@example.com\t") and "/claim/" in first[1]
    _ok(cli, "distribution", "claim", "--campaign", campaign_id, "+1 555 555 0100")
    assert _ok(cli, "distribution", "pool", "--campaign", campaign_id).strip() == "total 5  assigned 2  free 3"
    rows = list(csv.DictReader(io.StringIO(_ok(cli, "distribution", "export", "--campaign", campaign_id))))
    assert [r["recipient"] for r in rows] == ["ann@example.com", "+15555550100"]
    assert rows[0]["link"] == first[1]
    pull = cli.invoke(main, ["distribution", "pull-url", "--campaign", campaign_id, "--days", "30"])
    assert pull.exit_code == 0 and "/pull/" in pull.stdout and "couponry keys revoke" in pull.stderr
    bad = cli.invoke(main, ["distribution", "claim", "--campaign", campaign_id, "not a recipient"])
    assert bad.exit_code == 1 and "phone number" in bad.output
    queued = _ok(cli, "distribution", "push", "--campaign", campaign_id, "--provider", "twilio")
    assert queued.strip() == "2 recipient(s) queued for twilio"
    assert "+15555550100\ttwilio\tqueued" in _ok(cli, "distribution", "deliveries", "--campaign", campaign_id)
    _ok(cli, "distribution", "policy", "--campaign", campaign_id, "--alert-below", "10")
    _ok(cli, "distribution", "claim", "--campaign", campaign_id, "id:7")
    assert "pool_low\topen" in _ok(cli, "distribution", "alerts")


def test_partners_and_referrals(cli: CliRunner) -> None:  # noqa: F811
    campaign_id = campaign(cli, "Partners")
    partner_id = _ok(cli, "partners", "create", "Acme").strip()
    assert (
        _ok(cli, "partners", "allocate", partner_id, "--campaign", campaign_id, "--count", "2").strip() == "2 code(s) allocated"
    )
    assert _ok(cli, "partners", "key", partner_id).startswith("cpy_")
    links = list(
        csv.DictReader(io.StringIO(_ok(cli, "partners", "links", partner_id, "--campaign", campaign_id, "--slots", "3")))
    )
    assert [r["slot"] for r in links] == [f"slot:{partner_id}:{n}" for n in (1, 2, 3)]
    assert _ok(cli, "partners", "list").strip() == f"{partner_id}\tAcme"

    referral_id = campaign(cli, "Refer", SHAREABLE)
    reward_id = campaign(cli, "Rewards", codes=0)
    _ok(cli, "referrals", "create", "--campaign", referral_id, "--reward-campaign", reward_id)
    code = _ok(cli, "referrals", "code", "--campaign", referral_id, "id:ref-1").strip()
    assert _ok(cli, "referrals", "code", "--campaign", referral_id, "id:ref-1").strip() == code
    assert _ok(cli, "referrals", "list", "--campaign", referral_id) == ""


def test_a_referrer_can_give_their_address_and_sandbox_orders_can_ship(
    cli: CliRunner,  # noqa: F811
    cli_database_url: str,  # noqa: F811
) -> None:
    referral_id = campaign(cli, "Refer", SHAREABLE)
    reward_id = campaign(cli, "Rewards", codes=0)
    _ok(cli, "referrals", "create", "--campaign", referral_id, "--reward-campaign", reward_id)
    home = ["--address1", "12 Main Street", "--address2", "Apt 4", "--postcode", "SW1A 1AA", "--country", "GB"]
    code = _ok(cli, "referrals", "code", "--campaign", referral_id, *home, "id:ref-1").strip()
    assert _ok(cli, "referrals", "code", "--campaign", referral_id, "id:ref-1").strip() == code
    engine = make_engine(cli_database_url)
    with Session(engine) as session:
        (kept,) = session.exec(select(ReferrerAddress)).all()
    engine.dispose()
    assert (kept.referrer, len(kept.address_key)) == ("id:ref-1", 64)  # a fingerprint, not the address
    partial = cli.invoke(main, ["referrals", "code", "--campaign", referral_id, "--address1", "12 Main St", "id:ref-2"])
    assert partial.exit_code == 2 and "--postcode" in partial.output

    ship = ["--address1", "12 Main Street", "--zip", "SW1A 1AA", "--country", "GB"]
    placed = json.loads(_ok(cli, "sandbox", "order", "--subtotal", "10.00", "--code", code, "--force", *ship))
    assert placed["shipping_address"] == {"address1": "12 Main Street", "address2": "", "zip": "SW1A 1AA", "country_code": "GB"}


def test_a_klaviyo_pool_on_the_cli(cli: CliRunner) -> None:  # noqa: F811
    campaign_id = campaign(cli, "Klaviyo", codes=4)
    made = _ok(cli, "klaviyo-pool", "create", "--campaign", campaign_id, "--coupon", "SPRING10", "--count", "3")
    assert "3 code(s) queued for Klaviyo coupon SPRING10" in made and "{% coupon_code 'SPRING10' %}" in made
    pool_id = made.splitlines()[1].split("\t")[0].removeprefix("pool ")
    assert "queued 3, sending 0, submitted 0, uploaded 0, failed 0" in _ok(cli, "klaviyo-pool", "status", pool_id)
    assert _ok(cli, "klaviyo-pool", "add", pool_id, "--count", "5").strip() == "1 code(s) queued"
    assert len(_ok(cli, "klaviyo-pool", "codes", pool_id, "--status", "queued").splitlines()) == 4
    assert _ok(cli, "klaviyo-pool", "retry", pool_id).strip() == "0 code(s) queued again"
    assert _ok(cli, "klaviyo-pool", "policy", pool_id, "--alert-below", "5").strip() == "policy saved"
    # the campaign has nothing left to claim: the pool's codes are Klaviyo's to hand out
    assert _ok(cli, "distribution", "pool", "--campaign", campaign_id).strip() == "total 4  assigned 0  free 0"
    bad = cli.invoke(main, ["klaviyo-pool", "create", "--campaign", campaign_id, "--coupon", "10 OFF"])
    assert bad.exit_code == 1 and "coupon id" in bad.output
