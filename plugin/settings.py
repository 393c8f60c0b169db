"""Settings, read once from the environment (`COUPONRY_` prefix, plus DATABASE_URL, REDIS_URL, PORT)."""

from __future__ import annotations

import os
import secrets
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path


class Secret(str):
    """A string that never shows its value in repr or logs."""

    def __repr__(self) -> str:
        return "Secret('**********')"


def _normalise_database_url(url: str) -> str:
    # Platforms hand out postgres:// URLs; SQLAlchemy wants a driver named, and we use psycopg 3.
    for prefix in ("postgres://", "postgresql://"):
        if url.startswith(prefix):
            return "postgresql+psycopg://" + url[len(prefix) :]
    return url


def _bool(value: str) -> bool:
    return value.strip().lower() in {"1", "true", "yes", "on"}


WEBHOOK_PROCESSING = ("web", "worker")


@dataclass(frozen=True)
class Settings:
    database_url: str = "sqlite:///couponry.db"
    redis_url: str | None = None
    host: str = "127.0.0.1"
    port: int = 8000
    public_url: str = "http://127.0.0.1:8000"
    secret_key: Secret = field(default_factory=lambda: Secret("dev-" + secrets.token_hex(16)))
    run_worker_in_process: bool = True
    # who turns stored order webhooks into redemptions: the web process that received them
    # ("web"), or the worker processes ("worker": web processes only verify and store)
    webhook_processing: str = "web"
    sandbox_enabled: bool = True
    default_shop_domain: str = "local.couponry.test"
    log_level: str = "info"
    connector_config: Mapping[str, Mapping[str, str]] = field(default_factory=dict)
    # earlier secret keys, still accepted to decrypt stored platform tokens while they are re-encrypted
    old_secret_keys: tuple[Secret, ...] = ()
    reconcile_interval_hours: float = 6.0  # 0 turns the periodic reconciliation off
    # --- guessing and lock-outs (issue 12 §5): failed-guess limits, the shop-wide alert, proxies
    failed_code_limit: str = "20/minute"  # per shopper (address or customer)
    failed_code_limit_unnamed: str = "120/minute"  # per server key, for calls that name no shopper
    guessing_alert: str = "500/hour"  # failures across one shop that raise the merchant's alert
    trusted_proxies: tuple[str, ...] = ()  # addresses/networks whose X-Forwarded-For we believe

    def __post_init__(self) -> None:
        if self.webhook_processing not in WEBHOOK_PROCESSING:
            raise ValueError(f"COUPONRY_WEBHOOK_PROCESSING must be one of {', '.join(WEBHOOK_PROCESSING)}")
        _check_guess_settings(self)

    @property
    def is_sqlite(self) -> bool:
        return self.database_url.startswith("sqlite")

    @property
    def sqlite_path(self) -> Path | None:
        if not self.is_sqlite:
            return None
        path = self.database_url.split("///", 1)[-1]
        return None if path in ("", ":memory:") else Path(path)

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> Settings:
        env = os.environ if environ is None else environ

        def get(name: str, default: str | None = None) -> str | None:
            return env.get(f"COUPONRY_{name}", default)

        port = int(env.get("PORT") or get("PORT") or 8000)
        host = get("HOST", "127.0.0.1") or "127.0.0.1"
        database_url = _normalise_database_url(env.get("DATABASE_URL") or get("DATABASE_URL") or "sqlite:///couponry.db")
        secret = get("SECRET_KEY")
        if secret is None:
            if not database_url.startswith("sqlite"):
                raise RuntimeError("COUPONRY_SECRET_KEY must be set when running on a shared database")
            secret = _embedded_secret(database_url)
        # Per-connector settings: COUPONRY_SHOPIFY_CLIENT_ID -> {"shopify": {"client_id": ...}}
        connector_config: dict[str, dict[str, str]] = {}
        for key, value in env.items():
            if not key.startswith("COUPONRY_"):
                continue
            rest = key[len("COUPONRY_") :].lower()
            platform, _, option = rest.partition("_")
            if platform in _CONNECTOR_NAMES and option:
                connector_config.setdefault(platform, {})[option] = value
        return cls(
            database_url=database_url,
            redis_url=env.get("REDIS_URL") or get("REDIS_URL"),
            host=host,
            port=port,
            public_url=(get("PUBLIC_URL") or f"http://{host}:{port}").rstrip("/"),
            secret_key=Secret(secret),
            run_worker_in_process=_bool(get("IN_PROCESS_WORKER", "true") or "true"),
            webhook_processing=get("WEBHOOK_PROCESSING", "web") or "web",
            sandbox_enabled=_bool(get("SANDBOX", "true") or "true"),
            default_shop_domain=get("DEFAULT_SHOP", "local.couponry.test") or "local.couponry.test",
            log_level=get("LOG_LEVEL", "info") or "info",
            connector_config=connector_config,
            old_secret_keys=tuple(Secret(k.strip()) for k in (get("OLD_SECRET_KEYS") or "").split(",") if k.strip()),
            reconcile_interval_hours=float(get("RECONCILE_HOURS", "6") or "6"),
            failed_code_limit=get("FAILED_CODE_LIMIT") or "20/minute",
            failed_code_limit_unnamed=get("FAILED_CODE_LIMIT_UNNAMED") or "120/minute",
            guessing_alert=get("GUESSING_ALERT") or "500/hour",
            trusted_proxies=tuple(p.strip() for p in (get("TRUSTED_PROXIES") or "").split(",") if p.strip()),
        )


def _check_guess_settings(settings: Settings) -> None:
    from limits import parse

    from plugin.web.clientaddr import parse_networks

    for name, value in (
        ("FAILED_CODE_LIMIT", settings.failed_code_limit),
        ("FAILED_CODE_LIMIT_UNNAMED", settings.failed_code_limit_unnamed),
        ("GUESSING_ALERT", settings.guessing_alert),
    ):
        try:
            parse(value)
        except ValueError:
            raise ValueError(f"COUPONRY_{name} must be a rate such as 20/minute, not {value!r}") from None
    parse_networks(settings.trusted_proxies)


def _embedded_secret(database_url: str) -> str:
    """The embedded default keeps a generated key beside its database, so signed links,
    cookies and encrypted tokens survive restarts without any configuration."""
    db_path = database_url.split("///", 1)[-1]
    if db_path in ("", ":memory:"):
        return "dev-" + secrets.token_hex(16)
    key_file = Path(db_path).with_suffix(".secret")
    if key_file.exists():
        return key_file.read_text().strip()
    key = secrets.token_urlsafe(32)
    key_file.touch(mode=0o600)
    key_file.write_text(key)
    return key


_CONNECTOR_NAMES = {"shopify", "woocommerce", "bigcommerce", "sandbox", "klaviyo", "mailchimp", "braze", "twilio", "sendgrid"}
