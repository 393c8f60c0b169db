"""Settings, read once from the environment (`COUPONRY_` prefix, plus DATABASE_URL, REDIS_URL, PORT)."""

from __future__ import annotations

import ipaddress
import os
import secrets
import tempfile
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

from plugin.errors import ConfigError


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


# Configuration mistakes end the process with one line (ConfigError), checked before anything runs.
SUPPORTED_DATABASES = (
    "couponry supports SQLite file URLs (sqlite:///path/to/couponry.db) "
    "and PostgreSQL (postgresql://user:password@host:5432/name)"
)


def _check_database_url(url: str, variable: str) -> None:
    """Refuse a URL couponry can't use, in one line naming `variable` and never echoing the URL
    (it may hold a password). A SQLite file must be in a directory that exists: SQLite creates
    the file, never its directory, and the embedded default writes its key beside the file."""
    from sqlalchemy.engine import make_url
    from sqlalchemy.exc import ArgumentError

    try:
        parsed = make_url(url)
    except ArgumentError:
        raise ConfigError(f"{variable} is not a database URL; {SUPPORTED_DATABASES}") from None
    except ValueError:  # SQLAlchemy converts one part: the port
        raise ConfigError(f"{variable} can't be read: its port is not a number; {SUPPORTED_DATABASES}") from None
    backend, _, driver = parsed.drivername.partition("+")
    if backend == "postgresql" and driver != "psycopg":
        raise ConfigError(
            f"{variable} asks for the {driver} driver; {SUPPORTED_DATABASES} through psycopg 3 (drop the +{driver})"
        )
    if backend not in ("sqlite", "postgresql") or (backend == "sqlite" and driver not in ("", "pysqlite")):
        raise ConfigError(f"{variable} names a {parsed.drivername} database; {SUPPORTED_DATABASES}")
    if backend == "sqlite" and parsed.database not in (None, "", ":memory:"):
        directory = Path(parsed.database).absolute().parent
        if not directory.is_dir():
            missing = "is not a directory" if directory.exists() else "does not exist"
            raise ConfigError(
                f"{variable} puts the SQLite database in {directory}, but the directory {directory} {missing}: "
                f"create it (mkdir -p {directory}) or point {variable} at a file in an existing directory"
            )


def _number(env: Mapping[str, str], name: str, default: str, kind: type[int] | type[float]) -> float:
    value = env.get(name) or default
    try:
        return kind(value)
    except ValueError:
        whole = "a whole number" if kind is int else "a number"
        raise ConfigError(f"{name} must be {whole} (it is {value!r})") from None


def _bool(value: str) -> bool:
    return value.strip().lower() in {"1", "true", "yes", "on"}


@dataclass(frozen=True)
class RetiredKey:
    """A signing key no longer used to sign, still verifying until `retired_at` + the grace period."""

    key: Secret
    retired_at: datetime


WEBHOOK_PROCESSING = ("web", "worker")
LOG_FORMATS = ("auto", "json", "text")
MIN_SECRET_LENGTH = 32


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
    # "json" (one object per line), "text" (readable), or "auto": JSON on PostgreSQL, text on SQLite
    log_format: str = "auto"
    # when set, GET /metrics asks for `Authorization: Bearer <token>`
    metrics_token: Secret | None = None
    connector_config: Mapping[str, Mapping[str, str]] = field(default_factory=dict)
    # Keys per purpose (plugin.keyring), each rotatable on its own; unset, both are the secret key.
    # The token key encrypts stored platform credentials; earlier token keys still decrypt them
    # until `couponry keys rotate-token-key` has re-encrypted every row.
    token_key: Secret | None = None
    old_token_keys: tuple[Secret, ...] = ()
    # The signing key signs claim links, pull URLs, setup links, install state and admin sessions;
    # a retired signing key still verifies for signing_key_grace_days after its retirement date.
    signing_key: Secret | None = None
    old_signing_keys: tuple[RetiredKey, ...] = ()
    signing_key_grace_days: float = 90.0
    reconcile_interval_hours: float = 6.0  # 0 turns the periodic reconciliation off
    # --- reconciliation repairs (#13) ---
    # share of a platform's per-store code cap (Shopify: 20 M) that opens the platform_capacity alert; 0 = never
    platform_capacity_alert: float = 0.8
    # --- install flows ---
    # let WooCommerce installs reach stores on loopback/private addresses (a store on the
    # developer's machine, tests); never link-local (the cloud metadata service). Off in production.
    allow_private_stores: bool = False
    # --- outbound events (plugin.events): an endpoint is disabled (with an alert) once this many
    # attempts in a row failed, or once it has failed without a success for this many days
    event_disable_failures: int = 30
    event_disable_days: float = 5.0
    # --- request bodies and connections ---
    webhook_body_limit: int = 5 * 1024 * 1024  # bytes; Shopify orders with many lines are large
    callback_body_limit: int = 64 * 1024  # install and provider callbacks
    api_body_limit: int = 1024 * 1024  # API calls, unless a route documents more (plugin.web.limits)
    request_timeout: float = 20.0  # seconds a connection has to send a complete request
    concurrency_limit: int = 1000  # connections + requests `serve` takes before answering 503; 0 = none
    # --- data retention (plugin.orders.retention); 0 = kept for ever
    webhook_retention_days: float = 30.0  # ignored/failed deliveries deleted after
    webhook_payload_retention_days: float = 90.0  # processed deliveries' payloads (customer details) emptied after
    audit_retention_days: float = 730.0  # audit rows deleted after (but those still read)
    # --- refunds: how long a refund of an order we have not seen yet waits for it (Shopify's
    # refunds carry no codes, so such a refund is kept, then ignored once this has passed)
    early_refund_days: float = 7.0
    # --- guessing and lock-outs: failed-guess limits, the shop-wide alert, proxies
    failed_code_limit: str = "20/minute"  # per shopper (address or customer)
    failed_code_limit_unnamed: str = "120/minute"  # per server key, for calls that name no shopper
    guessing_alert: str = "500/hour"  # failures across one shop that raise the merchant's alert
    sign_in_limit: str = "5/15 minutes"  # failed admin sign-ins per (shop, email) before a lock
    sign_in_address_limit: str = "30/15 minutes"  # failed admin sign-ins per client address
    trusted_proxies: tuple[str, ...] = ()  # addresses/networks whose X-Forwarded-For we believe
    # --- the worker: jobs run at once per worker process, jobs of one shop running at once
    # across all workers, codes one sync push job sends before it queues the rest behind others
    worker_concurrency: int = 4
    worker_shop_concurrency: int = 2
    sync_chunk: int = 10_000
    # seconds a worker's claim on a running job lasts unrenewed: how soon a dead worker's jobs are taken over
    worker_lease_seconds: float = 60.0

    def __post_init__(self) -> None:
        for name, key in (("TOKEN_KEY", self.token_key), ("SIGNING_KEY", self.signing_key)):
            if key is not None and len(key) < MIN_SECRET_LENGTH:
                raise ConfigError(
                    f"COUPONRY_{name} must be at least {MIN_SECRET_LENGTH} characters (it is {len(key)}); "
                    "generate one with: couponry keys generate"
                )
        for name, days in (
            ("WEBHOOK_RETENTION_DAYS", self.webhook_retention_days),
            ("WEBHOOK_PAYLOAD_RETENTION_DAYS", self.webhook_payload_retention_days),
            ("AUDIT_RETENTION_DAYS", self.audit_retention_days),
        ):
            if days < 0:
                raise ConfigError(f"COUPONRY_{name} must not be negative (it is {days}); 0 keeps everything")
        if self.signing_key_grace_days < 0:
            raise ConfigError(f"COUPONRY_SIGNING_KEY_GRACE_DAYS must not be negative (it is {self.signing_key_grace_days})")
        if len(self.secret_key) < MIN_SECRET_LENGTH:
            # an empty or short key lets anyone forge claim links, pull URLs and sessions
            raise ConfigError(
                f"COUPONRY_SECRET_KEY must be at least {MIN_SECRET_LENGTH} characters (it is {len(self.secret_key)}); "
                'generate one with: python3 -c "import secrets; print(secrets.token_urlsafe(32))"'
            )
        if self.log_format not in LOG_FORMATS:
            raise ConfigError(f"COUPONRY_LOG_FORMAT must be one of {', '.join(LOG_FORMATS)} (it is {self.log_format!r})")
        if self.webhook_processing not in WEBHOOK_PROCESSING:
            raise ConfigError(f"COUPONRY_WEBHOOK_PROCESSING must be one of {', '.join(WEBHOOK_PROCESSING)}")
        _check_guess_settings(self)
        for name, value in (
            ("WORKER_CONCURRENCY", self.worker_concurrency),
            ("WORKER_SHOP_CONCURRENCY", self.worker_shop_concurrency),
            ("SYNC_CHUNK", self.sync_chunk),
        ):
            if value < 1:
                raise ConfigError(f"COUPONRY_{name} must be at least 1 (it is {value})")
        if self.worker_lease_seconds < 1:
            # renewed every third of it: shorter, and a busy worker loses jobs it is still running
            raise ConfigError(f"COUPONRY_WORKER_LEASE_SECONDS must be at least 1 (it is {self.worker_lease_seconds:g})")

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

        port = int(_number(env, "PORT" if env.get("PORT") else "COUPONRY_PORT", "8000", int))
        host = get("HOST", "127.0.0.1") or "127.0.0.1"
        database_url = _normalise_database_url(env.get("DATABASE_URL") or get("DATABASE_URL") or "sqlite:///couponry.db")
        url_variable = "COUPONRY_DATABASE_URL" if get("DATABASE_URL") and not env.get("DATABASE_URL") else "DATABASE_URL"
        _check_database_url(database_url, url_variable)
        secret = get("SECRET_KEY")
        if secret is None:
            if not database_url.startswith("sqlite"):
                raise ConfigError("COUPONRY_SECRET_KEY must be set when running on a shared database (e.g. openssl rand -hex 32)")
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
            log_format=(get("LOG_FORMAT") or "auto").strip().lower(),
            metrics_token=Secret(token) if (token := (get("METRICS_TOKEN") or "").strip()) else None,
            connector_config=connector_config,
            token_key=Secret(get("TOKEN_KEY") or "") or None,
            # COUPONRY_OLD_SECRET_KEYS: the name earlier releases gave the old token keys
            old_token_keys=_key_list(get("OLD_TOKEN_KEYS")) + _key_list(get("OLD_SECRET_KEYS")),
            signing_key=Secret(get("SIGNING_KEY") or "") or None,
            old_signing_keys=_retired_keys(get("OLD_SIGNING_KEYS")),
            signing_key_grace_days=_number(env, "COUPONRY_SIGNING_KEY_GRACE_DAYS", str(cls.signing_key_grace_days), float),
            reconcile_interval_hours=_number(env, "COUPONRY_RECONCILE_HOURS", "6", float),
            # reconciliation repairs (#13)
            platform_capacity_alert=_number(env, "COUPONRY_PLATFORM_CAPACITY_ALERT", "0.8", float),
            allow_private_stores=_bool(get("ALLOW_PRIVATE_STORES", "false") or "false"),
            event_disable_failures=int(_number(env, "COUPONRY_EVENT_DISABLE_FAILURES", "30", int)),
            event_disable_days=_number(env, "COUPONRY_EVENT_DISABLE_DAYS", "5", float),
            # request bodies and connections
            webhook_body_limit=int(_number(env, "COUPONRY_WEBHOOK_BODY_LIMIT", str(cls.webhook_body_limit), int)),
            callback_body_limit=int(_number(env, "COUPONRY_CALLBACK_BODY_LIMIT", str(cls.callback_body_limit), int)),
            api_body_limit=int(_number(env, "COUPONRY_API_BODY_LIMIT", str(cls.api_body_limit), int)),
            request_timeout=_number(env, "COUPONRY_REQUEST_TIMEOUT", str(cls.request_timeout), float),
            concurrency_limit=int(_number(env, "COUPONRY_CONCURRENCY_LIMIT", str(cls.concurrency_limit), int)),
            webhook_retention_days=_number(env, "COUPONRY_WEBHOOK_RETENTION_DAYS", str(cls.webhook_retention_days), float),
            webhook_payload_retention_days=_number(
                env, "COUPONRY_WEBHOOK_PAYLOAD_RETENTION_DAYS", str(cls.webhook_payload_retention_days), float
            ),
            audit_retention_days=_number(env, "COUPONRY_AUDIT_RETENTION_DAYS", str(cls.audit_retention_days), float),
            early_refund_days=_number(env, "COUPONRY_EARLY_REFUND_DAYS", "7", float),
            failed_code_limit=get("FAILED_CODE_LIMIT") or "20/minute",
            failed_code_limit_unnamed=get("FAILED_CODE_LIMIT_UNNAMED") or "120/minute",
            guessing_alert=get("GUESSING_ALERT") or "500/hour",
            sign_in_limit=get("SIGN_IN_LIMIT") or cls.sign_in_limit,
            sign_in_address_limit=get("SIGN_IN_ADDRESS_LIMIT") or cls.sign_in_address_limit,
            trusted_proxies=tuple(p.strip() for p in (get("TRUSTED_PROXIES") or "").split(",") if p.strip()),
            worker_concurrency=int(_number(env, "COUPONRY_WORKER_CONCURRENCY", str(cls.worker_concurrency), int)),
            worker_shop_concurrency=int(_number(env, "COUPONRY_WORKER_SHOP_CONCURRENCY", str(cls.worker_shop_concurrency), int)),
            sync_chunk=int(_number(env, "COUPONRY_SYNC_CHUNK", str(cls.sync_chunk), int)),
            worker_lease_seconds=_number(env, "COUPONRY_WORKER_LEASE_SECONDS", str(cls.worker_lease_seconds), float),
        )


def _key_list(value: str | None) -> tuple[Secret, ...]:
    return tuple(Secret(k.strip()) for k in (value or "").split(",") if k.strip())


def _retired_keys(value: str | None) -> tuple[RetiredKey, ...]:
    """COUPONRY_OLD_SIGNING_KEYS: `key@date` entries, comma-separated, the date (ISO 8601, UTC
    unless it says otherwise) being when the key stopped signing: the grace period runs from it."""
    retired: list[RetiredKey] = []
    for position, entry in enumerate((value or "").split(","), start=1):
        if not entry.strip():
            continue
        key, at, when = entry.strip().rpartition("@")
        try:
            moment = datetime.fromisoformat(when.strip())
        except ValueError:
            moment = None
        if not at or not key or moment is None:
            raise ConfigError(
                f"COUPONRY_OLD_SIGNING_KEYS entry {position} must be KEY@DATE, the date the key was retired "
                "(e.g. ...@2026-12-07): links it signed stay valid for COUPONRY_SIGNING_KEY_GRACE_DAYS after it"
            )
        retired.append(RetiredKey(Secret(key), moment if moment.tzinfo else moment.replace(tzinfo=UTC)))
    return tuple(retired)


Network = ipaddress.IPv4Network | ipaddress.IPv6Network


def parse_networks(entries: Iterable[str]) -> tuple[Network, ...]:
    """Addresses or CIDR networks (`10.0.0.0/8`, `::1`) of COUPONRY_TRUSTED_PROXIES; a
    ConfigError names a bad one."""
    networks: list[Network] = []
    for entry in entries:
        try:
            networks.append(ipaddress.ip_network(entry.strip(), strict=False))
        except ValueError:
            raise ConfigError(f"COUPONRY_TRUSTED_PROXIES: {entry.strip()!r} is not an IP address or network") from None
    return tuple(networks)


def _check_guess_settings(settings: Settings) -> None:
    from limits import parse

    for name, value in (
        ("FAILED_CODE_LIMIT", settings.failed_code_limit),
        ("FAILED_CODE_LIMIT_UNNAMED", settings.failed_code_limit_unnamed),
        ("GUESSING_ALERT", settings.guessing_alert),
        ("SIGN_IN_LIMIT", settings.sign_in_limit),
        ("SIGN_IN_ADDRESS_LIMIT", settings.sign_in_address_limit),
    ):
        try:
            parse(value)
        except ValueError:
            raise ConfigError(f"COUPONRY_{name} must be a rate such as 20/minute, not {value!r}") from None
    parse_networks(settings.trusted_proxies)


def embedded_key_file(database: Path) -> Path:
    """Where the embedded default keeps its generated secret key: beside its database."""
    return database.with_suffix(".secret")


def _embedded_secret(database_url: str) -> str:
    """The embedded default keeps a generated key beside its database, so signed links,
    cookies and encrypted tokens survive restarts without any configuration.

    Several processes may start together on a fresh directory: the key is written whole to a
    private temporary file and linked into place, which fails if another process got there
    first; the loser reads the winner's key. Nobody ever reads a half-written or empty file."""
    db_path = database_url.split("///", 1)[-1]
    if db_path in ("", ":memory:"):
        return "dev-" + secrets.token_hex(16)
    key_file = embedded_key_file(Path(db_path))
    if key_file.exists():
        return _read_key_file(key_file)
    key = secrets.token_urlsafe(32)
    fd, temp = tempfile.mkstemp(dir=key_file.parent, prefix=f".{key_file.name}.", suffix=".tmp")  # mode 0600
    try:
        with os.fdopen(fd, "w") as f:
            f.write(key)
            f.flush()
            os.fsync(f.fileno())
        os.link(temp, key_file)  # atomic, and never replaces an existing key (unlike rename)
    except FileExistsError:
        return _read_key_file(key_file)
    finally:
        os.unlink(temp)
    return key


def _read_key_file(key_file: Path) -> str:
    key = key_file.read_text().strip()
    if len(key) < MIN_SECRET_LENGTH:
        raise ConfigError(
            f"{key_file} holds a key of {len(key)} characters (at least {MIN_SECRET_LENGTH} are needed): "
            "delete the file to have a new key generated (links signed with the old one stop working)"
        )
    return key


_CONNECTOR_NAMES = {"shopify", "woocommerce", "bigcommerce", "sandbox", "klaviyo", "mailchimp", "braze", "twilio", "sendgrid"}
