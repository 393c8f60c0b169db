"""Where a shop's alerts go besides the admin: an email address and a Slack incoming webhook.

    get_channels / save_channels   the settings (the SMTP password and the Slack URL encrypted;
                                   shown back only as "set")
    handle_notify                  the worker: an alert opened (plugin.store.alerts queued the
                                   `alerts.notify` job in the alert's transaction) goes to each
                                   channel set; retried by the outbox on a 5xx, 429 or timeout

The SMTP server is one the merchant names: its host passes the same address check as an
endpoint URL (public addresses only unless COUPONRY_ALLOW_PRIVATE_STORES). A job sends to
every channel again when one of them failed: an email may then arrive twice, never not at all.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import TYPE_CHECKING

from sqlalchemy import Engine
from sqlmodel import Session, col, select

from connectors import slack, smtpmail
from connectors.egress import AddressPolicy, ForbiddenAddress
from connectors.errors import ConnectorError, Rejected
from plugin.errors import InvalidInput
from plugin.settings import Settings
from plugin.shops import tokens
from plugin.store import alerts
from plugin.store.db import read_session, run
from plugin.store.models import Alert, AlertChannel, Shop

if TYPE_CHECKING:
    from plugin.store.jobcontext import Handler, JobContext
    from plugin.store.jobstore import ClaimedJob


class InvalidChannel(InvalidInput):
    reason = "invalid_alert_channel"

    def __init__(self, field: str, message: str) -> None:
        super().__init__(message, details={"field": field})
        self.field = field


@dataclass(frozen=True)
class Channels:
    """The settings as shown: secrets only as whether they are set."""

    email_to: str | None = None
    email_from: str | None = None
    smtp_host: str | None = None
    smtp_port: int | None = None
    smtp_security: str = "starttls"
    smtp_user: str | None = None
    smtp_password_set: bool = False
    slack_set: bool = False


def get_channels(session: Session, *, shop_id: int) -> Channels:
    row = session.get(AlertChannel, shop_id)
    if row is None:
        return Channels()
    return Channels(
        row.email_to,
        row.email_from,
        row.smtp_host,
        row.smtp_port,
        row.smtp_security,
        row.smtp_user,
        bool(row.smtp_password_encrypted),
        bool(row.slack_url_encrypted),
    )


def _email(field: str, value: str | None) -> str | None:
    value = (value or "").strip() or None
    if value is not None and (len(value) > 254 or value.count("@") != 1 or any(c in value for c in " \r\n<>,;")):
        raise InvalidChannel(field, f"{field} must be one email address")
    return value


async def check_smtp_host(host: str | None, port: int | None, policy: AddressPolicy) -> None:
    """Refuse a host that resolves to an address we may not connect to."""
    if not host:
        return
    try:
        await policy.check(host, port or 587)
    except ForbiddenAddress:
        raise InvalidChannel("smtp_host", f"{host} is not a public address we may connect to") from None


def save_channels(
    session: Session,
    settings: Settings,
    *,
    shop_id: int,
    email_to: str | None,
    email_from: str | None,
    smtp_host: str | None,
    smtp_port: int | None,
    smtp_security: str,
    smtp_user: str | None,
    smtp_password: str | None,
    slack_url: str | None,
    now: datetime,
) -> Channels:
    """Save the channels (an smtp host already through `check_smtp_host`). A password or Slack
    URL of None keeps the stored one; an empty string removes it."""
    email_to, email_from = _email("email_to", email_to), _email("email_from", email_from)
    smtp_host = (smtp_host or "").strip().lower() or None
    if smtp_security not in smtpmail.SECURITIES:
        raise InvalidChannel("smtp_security", f"smtp_security must be one of {', '.join(smtpmail.SECURITIES)}")
    if smtp_port is not None and not 1 <= smtp_port <= 65535:
        raise InvalidChannel("smtp_port", "smtp_port must be between 1 and 65535")
    if email_to is not None and smtp_host is None:
        raise InvalidChannel("smtp_host", "an SMTP server is needed to send alerts by email")
    if email_to is not None and email_from is None:
        raise InvalidChannel("email_from", "say which address the alerts come from")
    if smtp_host is not None and (len(smtp_host) > 255 or any(c in smtp_host for c in " /:@")):
        raise InvalidChannel("smtp_host", "smtp_host must be a host name, without scheme or port")
    row = session.get(AlertChannel, shop_id) or AlertChannel(shop_id=shop_id)
    if slack_url is not None:
        slack_url = slack_url.strip()
        if slack_url and not slack.is_webhook_url(slack_url):
            raise InvalidChannel("slack_url", "slack_url must be a Slack incoming webhook: https://hooks.slack.com/services/…")
        row.slack_url_encrypted = tokens.encrypt(settings, slack_url) if slack_url else None
    if smtp_password is not None:
        row.smtp_password_encrypted = tokens.encrypt(settings, smtp_password) if smtp_password else None
    row.email_to, row.email_from, row.smtp_host, row.smtp_port = email_to, email_from, smtp_host, smtp_port
    row.smtp_security, row.smtp_user, row.updated_at = smtp_security, (smtp_user or "").strip() or None, now
    session.add(row)
    session.flush()
    return get_channels(session, shop_id=shop_id)


def send_test_alert(session: Session, *, shop_id: int, now: datetime) -> int | None:
    """Queue a message to the channels now (the job id; None when none is set)."""
    alert = Alert(
        shop_id=shop_id,
        kind="test",
        message="a test alert from Couponry: your alert channels work",
        created_at=now,
        last_seen_at=now,
        resolved_at=now,
    )
    session.add(alert)
    session.flush()
    assert alert.id is not None
    return alerts.notify(session.connection(), shop_id=shop_id, alert_id=alert.id, now=now)


# --- the worker ------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Message:
    row: AlertChannel
    subject: str
    text: str


def _message(engine: Engine, shop_id: int, alert_id: int) -> _Message | None:
    with read_session(engine) as session:
        row = session.get(AlertChannel, shop_id)
        alert = session.exec(select(Alert).where(col(Alert.id) == alert_id, col(Alert.shop_id) == shop_id)).first()
        shop = session.get(Shop, shop_id)
        if row is None or alert is None:
            return None
        session.expunge(row)
        where = shop.domain if shop is not None else f"shop {shop_id}"
        subject = f"[Couponry] {where}: {alert.kind.replace('_', ' ')}"
        text = f"{alert.message}\n\nShop: {where}\nAlert: {alert.kind} (#{alert.id}) at {alert.created_at:%Y-%m-%d %H:%M} UTC\n"
        return _Message(row, subject, text)


async def handle_notify(ctx: JobContext, job: ClaimedJob) -> None:
    assert job.shop_id is not None
    shop_id, alert_id = job.shop_id, int(job.payload["alert_id"])
    message = await run(ctx.engine, lambda: _message(ctx.engine, shop_id, alert_id))
    if message is None:
        return
    row, failures = message.row, []
    if row.slack_url_encrypted:
        url = tokens.decrypt(ctx.settings, row.slack_url_encrypted).access_token
        try:
            await slack.post(ctx.http, url, f"*{message.subject}*\n{message.text}")
        except ConnectorError as exc:
            failures.append(exc)
    if row.email_to and row.smtp_host and row.email_from:
        password = tokens.decrypt(ctx.settings, row.smtp_password_encrypted).access_token if row.smtp_password_encrypted else None
        server = smtpmail.SmtpServer(
            row.smtp_host,
            row.smtp_port or (465 if row.smtp_security == "ssl" else 587),
            row.smtp_security,
            row.smtp_user,
            password,
        )
        try:
            await check_smtp_host(server.host, server.port, AddressPolicy(allow_private=ctx.settings.allow_private_stores))
            await smtpmail.send(server, sender=row.email_from, to=row.email_to, subject=message.subject, text=message.text)
        except InvalidChannel as exc:
            failures.append(Rejected(exc.message))
        except ConnectorError as exc:
            failures.append(exc)
    if failures:
        # the retryable failure first: the outbox retries when any channel may still get through
        failures.sort(key=lambda e: not e.retryable)
        raise failures[0]


HANDLERS: dict[str, Handler] = {alerts.NOTIFY: handle_notify}
