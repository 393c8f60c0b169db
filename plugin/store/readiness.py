"""Whether this process can serve: the database answers and is migrated to this version, and
Redis (when configured) answers. `/readyz` asks; `/healthz` never does (plugin.web.health)."""

from __future__ import annotations

from sqlalchemy import Engine

from plugin.errors import ConfigError
from plugin.store import db, migrate

TIMEOUT = 2.0  # seconds: a readiness probe must answer before the orchestrator gives up on it


def database_problem(engine: Engine) -> str | None:
    """None when the database answers and its schema is this version's; else why not, in one line."""
    if not db.ping(engine):
        return "the database does not answer"
    try:
        migrate.require_current(engine)
    except ConfigError as exc:
        return str(exc)
    return None


async def redis_problem(url: str) -> str | None:
    """None when Redis answers a PING within `TIMEOUT`; else why not (never the URL: it may hold a password)."""
    import redis.asyncio as redis

    client: redis.Redis[bytes] = redis.Redis.from_url(url, socket_timeout=TIMEOUT, socket_connect_timeout=TIMEOUT)
    try:
        await client.ping()
    except Exception as exc:  # any failure means not ready; the kind says enough
        return f"Redis does not answer ({type(exc).__name__})"
    finally:
        await client.aclose()  # type: ignore[attr-defined]  # (types-redis predates aclose)
    return None
