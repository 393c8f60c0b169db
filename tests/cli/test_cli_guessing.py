"""The CLI side of guessing and lock-outs: a shop's refusal mode and the odds after generating
codes (`serve` leaving X-Forwarded-For to the app: tests/cli/test_cli.py)."""

from __future__ import annotations

import json

import pytest
from click.testing import CliRunner
from sqlalchemy import Engine

from plugin.cli import main
from tests.cli.test_cli import cli, cli_database_url  # noqa: F401  (fixtures)


def _run(cli: CliRunner, *args: str) -> tuple[str, str]:  # noqa: F811
    result = cli.invoke(main, list(args), catch_exceptions=False)
    assert result.exit_code == 0, result.output
    return result.stdout, result.stderr


def test_a_shop_sets_its_refusal_mode(cli: CliRunner, engine: Engine) -> None:  # noqa: F811
    assert json.loads(_run(cli, "shops", "refusals")[0])["refusals"] == "default"
    assert json.loads(_run(cli, "shops", "refusals", "detailed")[0])["refusals"] == "detailed"
    assert json.loads(_run(cli, "shops", "refusals")[0])["refusals"] == "detailed"
    assert json.loads(_run(cli, "shops", "refusals", "generic")[0])["refusals"] == "generic"
    assert json.loads(_run(cli, "shops", "refusals", "default")[0])["refusals"] == "default"
    refused = cli.invoke(main, ["shops", "refusals", "chatty"])
    assert refused.exit_code == 2 and "chatty" in refused.output


def test_generating_codes_states_the_guess_odds(cli: CliRunner, monkeypatch: pytest.MonkeyPatch) -> None:  # noqa: F811
    monkeypatch.setenv("COUPONRY_GUESSING_ALERT", "300/hour")
    campaign_id = _run(cli, "campaigns", "create", "--name", "Odds")[0].strip()
    out, err = _run(cli, "codes", "generate", "--campaign", campaign_id, "--count", "1000")
    assert json.loads(out)["created"] == 1000
    assert "1,000 codes" in err and "per shopper at 20/minute" in err
    assert "shop-wide alert (300/hour)" in err and "names no shopper (120/minute)" in err
