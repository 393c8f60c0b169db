"""Alerts to the shop's channels: an alert opened (not one seen again) queues one message in
its transaction; Slack per its documented answers (200 "ok", 4xx text errors, 429 with
Retry-After); email through a local SMTP server (aiosmtpd), with and without credentials."""

from __future__ import annotations

import socket
from collections.abc import Iterator
from dataclasses import replace
from datetime import timedelta
from typing import Any

import httpx
import pytest
import respx
from aiosmtpd.controller import Controller
from aiosmtpd.smtp import AuthResult, Envelope, LoginPassword
from sqlalchemy import Engine
from sqlmodel import col, select

from connectors import slack
from connectors.errors import AuthError, RateLimited, Rejected, UpstreamError
from plugin.distribution import claimstore
from plugin.errors import InvalidInput
from plugin.events import channels
from plugin.settings import Settings
from plugin.store import alerts
from plugin.store.db import session_scope
from plugin.store.models import Job, utcnow
from tests.events.conftest import drain, worker

pytestmark = pytest.mark.anyio
SLACK = "https://hooks.slack.com/services/T000/B000/XXXXXXXX"


class Inbox:
    def __init__(self) -> None:
        self.messages: list[Envelope] = []

    async def handle_DATA(self, server: Any, session: Any, envelope: Envelope) -> str:
        self.messages.append(envelope)
        return "250 Message accepted for delivery"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _authenticator(server: Any, session: Any, envelope: Any, mechanism: str, auth_data: Any) -> AuthResult:
    ok = isinstance(auth_data, LoginPassword) and (auth_data.login, auth_data.password) == (b"alerts", b"s3cret")
    return AuthResult(success=ok, handled=False)


@pytest.fixture
def smtp() -> Iterator[tuple[Inbox, int]]:
    inbox, port = Inbox(), _free_port()
    controller = Controller(inbox, hostname="127.0.0.1", port=port, authenticator=_authenticator, auth_require_tls=False)
    controller.start()
    try:
        yield inbox, port
    finally:
        controller.stop()


def save(engine: Engine, settings: Settings, shop_id: int, **kw: Any) -> channels.Channels:
    values: dict[str, Any] = dict.fromkeys(("email_to", "email_from", "smtp_host", "smtp_port", "smtp_user", "smtp_password",
                                            "slack_url"))  # fmt: skip
    values.update({"smtp_security": "starttls", **kw})
    with session_scope(engine) as session:
        return channels.save_channels(session, settings, shop_id=shop_id, now=utcnow(), **values)


def raise_pool_low(engine: Engine, shop_id: int) -> bool:
    values = {"shop_id": shop_id, "campaign_id": 1, "partner_id": None, "kind": "pool_low", "details": {},
              "message": "campaign 'Spring': 3 free", "open_key": f"pool_low:{shop_id}:1:0"}  # fmt: skip
    with session_scope(engine) as session:
        return alerts.raise_alert(session.connection(), values, utcnow())


def notify_jobs(engine: Engine) -> list[Job]:
    with session_scope(engine) as session:
        return list(session.exec(select(Job).where(col(Job.kind) == alerts.NOTIFY).order_by(col(Job.id))).all())


def test_an_alert_opened_queues_one_message_only_when_channels_are_set(engine: Engine, settings: Settings, shop_id: int) -> None:
    assert raise_pool_low(engine, shop_id) is True
    assert notify_jobs(engine) == []  # no channels: nothing queued
    save(engine, settings, shop_id, slack_url=SLACK)
    assert raise_pool_low(engine, shop_id) is False  # the same alert seen again: counted, not sent
    assert notify_jobs(engine) == []
    with session_scope(engine) as session:
        claimstore.resolve_alert(session.connection(), open_key=f"pool_low:{shop_id}:1:0", now=utcnow())
    assert raise_pool_low(engine, shop_id) is True  # opened again after it was resolved: sent
    assert len(notify_jobs(engine)) == 1


async def test_slack_gets_the_alert(engine: Engine, settings: Settings, shop_id: int) -> None:
    save(engine, settings, shop_id, slack_url=SLACK)
    raise_pool_low(engine, shop_id)
    with respx.mock(assert_all_called=True) as mock:
        route = mock.post(SLACK).mock(return_value=httpx.Response(200, text="ok"))
        async with httpx.AsyncClient() as http:
            assert await drain(worker(engine, settings, http), engine) == 1
    text = route.calls.last.request.read().decode()
    assert "pool low" in text and "3 free" in text
    assert notify_jobs(engine)[0].status == "done"


@pytest.mark.parametrize(
    ("answer", "error"),
    [
        (httpx.Response(400, text="invalid_payload"), Rejected),
        (httpx.Response(403, text="action_prohibited"), AuthError),
        (httpx.Response(404, text="no_service"), AuthError),
        (httpx.Response(404, text="channel_not_found"), AuthError),
        (httpx.Response(410, text="channel_is_archived"), AuthError),
        (httpx.Response(429, headers={"Retry-After": "30"}, text="rate_limited"), RateLimited),
        (httpx.Response(500, text="rollup_error"), UpstreamError),
    ],
)
async def test_slacks_documented_errors(answer: httpx.Response, error: type[Exception]) -> None:
    with respx.mock(assert_all_called=True) as mock:
        mock.post(SLACK).mock(return_value=answer)
        async with httpx.AsyncClient() as http:
            with pytest.raises(error) as raised:
                await slack.post(http, SLACK, "hello")
    if isinstance(raised.value, RateLimited):
        assert raised.value.retry_after == 30.0


async def test_slack_429_and_timeouts_are_retried_then_sent_once(engine: Engine, settings: Settings, shop_id: int) -> None:
    save(engine, settings, shop_id, slack_url=SLACK)
    raise_pool_low(engine, shop_id)
    calls = 0

    def flaky(request: httpx.Request) -> httpx.Response:
        nonlocal calls
        calls += 1
        if calls == 1:
            return httpx.Response(429, headers={"Retry-After": "45"}, text="rate_limited")
        if calls == 2:
            raise httpx.ReadTimeout("slow", request=request)
        return httpx.Response(200, text="ok")

    with respx.mock(assert_all_called=True) as mock:
        route = mock.post(SLACK).mock(side_effect=flaky)
        async with httpx.AsyncClient() as http:
            w = worker(engine, settings, http)
            before = utcnow()
            assert await w.run_once()
            assert notify_jobs(engine)[0].run_after >= before + timedelta(seconds=45)
            await drain(w, engine)
    assert route.call_count == 3 and notify_jobs(engine)[0].status == "done"


async def test_a_removed_slack_webhook_is_not_retried(engine: Engine, settings: Settings, shop_id: int) -> None:
    save(engine, settings, shop_id, slack_url=SLACK)
    raise_pool_low(engine, shop_id)
    with respx.mock(assert_all_called=True) as mock:
        route = mock.post(SLACK).mock(return_value=httpx.Response(404, text="no_service"))
        async with httpx.AsyncClient() as http:
            await drain(worker(engine, settings, http), engine)
    (job,) = notify_jobs(engine)
    assert route.call_count == 1 and job.status == "dead" and "no_service" in (job.last_error or "")


async def test_email_through_a_local_smtp_server_with_credentials(
    engine: Engine, settings: Settings, shop_id: int, smtp: tuple[Inbox, int]
) -> None:
    inbox, port = smtp
    settings = replace(settings, allow_private_stores=True)  # the documented opt-in for a server on this machine
    shown = save(engine, settings, shop_id, email_to="ops@shop.example", email_from="alerts@couponry.example",
                 smtp_host="127.0.0.1", smtp_port=port, smtp_security="none", smtp_user="alerts",
                 smtp_password="s3cret")  # fmt: skip
    assert shown.smtp_password_set and not shown.slack_set
    raise_pool_low(engine, shop_id)
    async with httpx.AsyncClient() as http:
        await drain(worker(engine, settings, http), engine)
    (mail,) = inbox.messages
    assert mail.mail_from == "alerts@couponry.example" and mail.rcpt_tos == ["ops@shop.example"]
    content = bytes(mail.content or b"").decode()  # type: ignore[arg-type]
    assert "Subject: [Couponry] local.couponry.test: pool low" in content and "3 free" in content
    assert notify_jobs(engine)[0].status == "done"


async def test_wrong_smtp_credentials_fail_without_retrying(
    engine: Engine, settings: Settings, shop_id: int, smtp: tuple[Inbox, int]
) -> None:
    inbox, port = smtp
    settings = replace(settings, allow_private_stores=True)
    save(engine, settings, shop_id, email_to="ops@shop.example", email_from="a@couponry.example", smtp_host="127.0.0.1",
         smtp_port=port, smtp_security="none", smtp_user="alerts", smtp_password="wrong")  # fmt: skip
    raise_pool_low(engine, shop_id)
    async with httpx.AsyncClient() as http:
        await drain(worker(engine, settings, http), engine)
    (job,) = notify_jobs(engine)
    assert inbox.messages == [] and job.status == "dead" and "refused the credentials" in (job.last_error or "")


async def test_a_private_smtp_host_is_refused_without_the_opt_in(
    engine: Engine, settings: Settings, shop_id: int, smtp: tuple[Inbox, int]
) -> None:
    inbox, port = smtp
    save(engine, settings, shop_id, email_to="ops@shop.example", email_from="a@couponry.example", smtp_host="127.0.0.1",
         smtp_port=port, smtp_security="none")  # fmt: skip
    raise_pool_low(engine, shop_id)
    async with httpx.AsyncClient() as http:
        await drain(worker(engine, settings, http), engine)
    assert inbox.messages == [] and notify_jobs(engine)[0].status == "dead"


@pytest.mark.parametrize(
    ("values", "field"),
    [
        ({"email_to": "not-an-email", "email_from": "a@b.example", "smtp_host": "smtp.example.com"}, "email_to"),
        ({"email_to": "a@b.example", "email_from": "a@b.example"}, "smtp_host"),
        ({"email_to": "a@b.example", "smtp_host": "smtp.example.com"}, "email_from"),
        ({"smtp_host": "smtp://x", "email_to": "a@b.example", "email_from": "a@b.example"}, "smtp_host"),
        ({"smtp_security": "tls"}, "smtp_security"),
        ({"smtp_port": 70000}, "smtp_port"),
        ({"slack_url": "https://evil.example.com/services/x"}, "slack_url"),
        ({"slack_url": "http://hooks.slack.com/services/x"}, "slack_url"),
    ],
)
def test_bad_channel_settings_name_their_field(engine: Engine, settings: Settings, shop_id: int, values: dict[str, Any],
                                               field: str) -> None:  # fmt: skip
    with pytest.raises(InvalidInput) as refused:
        save(engine, settings, shop_id, **values)
    assert refused.value.details == {"field": field} and refused.value.reason == "invalid_alert_channel"


def test_secrets_are_kept_unless_replaced_or_removed(engine: Engine, settings: Settings, shop_id: int) -> None:
    assert save(engine, settings, shop_id, slack_url=SLACK).slack_set
    assert save(engine, settings, shop_id).slack_set  # None keeps it
    assert not save(engine, settings, shop_id, slack_url="").slack_set  # "" removes it


def test_the_worker_runs_event_and_alert_jobs_by_default() -> None:
    from plugin.jobs.worker import default_handlers

    handlers = default_handlers()
    assert handlers["events.deliver"] is not None and handlers[alerts.NOTIFY] is channels.handle_notify
