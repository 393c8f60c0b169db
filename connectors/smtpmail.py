"""Sending one plain-text email through the SMTP server a merchant named (aiosmtplib).

`security` is how the connection is protected: "starttls" (port 587: plain, then upgraded; the
upgrade is required, never skipped), "ssl" (port 465: TLS from the start) or "none" (only for
a relay on the merchant's own network, e.g. tests against a local server). Failures map onto
connectors.errors: refused credentials are an AuthError, a refused recipient is Rejected,
anything else on the way (connection, timeout, a 4xx reply) an UpstreamError worth a retry.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from email.message import EmailMessage

import aiosmtplib

from connectors.errors import AuthError, Rejected, UpstreamError

SECURITIES = ("starttls", "ssl", "none")
TIMEOUT = 20.0


@dataclass(frozen=True)
class SmtpServer:
    host: str
    port: int
    security: str = "starttls"
    user: str | None = None
    password: str | None = field(default=None, repr=False)


async def send(server: SmtpServer, *, sender: str, to: str, subject: str, text: str) -> None:
    message = EmailMessage()
    message["From"], message["To"], message["Subject"] = sender, to, subject
    message.set_content(text)
    try:
        await aiosmtplib.send(
            message,
            hostname=server.host,
            port=server.port,
            username=server.user or None,
            password=server.password or None,
            use_tls=server.security == "ssl",
            start_tls=server.security == "starttls",
            timeout=TIMEOUT,
        )
    except aiosmtplib.SMTPAuthenticationError as exc:
        raise AuthError(f"the SMTP server refused the credentials ({exc.code})") from exc
    except aiosmtplib.SMTPRecipientsRefused as exc:
        raise Rejected(f"the SMTP server refused the recipient {to}") from exc
    except aiosmtplib.SMTPResponseException as exc:
        if 500 <= exc.code < 600:
            raise Rejected(f"the SMTP server refused the message ({exc.code} {exc.message[:100]})") from exc
        raise UpstreamError(f"the SMTP server answered {exc.code} {exc.message[:100]}") from exc
    except (aiosmtplib.SMTPException, OSError) as exc:
        raise UpstreamError(f"could not send through {server.host}:{server.port}: {type(exc).__name__}") from exc
