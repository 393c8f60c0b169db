"""The `couponry` command line: the root group, its shared context, serve and migrate.

Each area adds its commands in a module of this package, imported at the bottom."""

from __future__ import annotations

import os
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, replace
from functools import cached_property

import click
from sqlalchemy import Engine

from plugin import migrate
from plugin.db import make_engine, session_scope
from plugin.errors import PluginError
from plugin.settings import Settings
from plugin.shops import ensure_local_shop, find_shop


@dataclass
class Context:
    settings: Settings
    shop_domain: str | None

    @cached_property
    def engine(self) -> Engine:
        engine = make_engine(self.settings.database_url)
        if self.settings.is_sqlite:
            migrate.upgrade(engine)  # the embedded default keeps itself migrated
        return engine

    def close(self) -> None:
        if "engine" in self.__dict__:  # only if a command opened it
            self.engine.dispose()

    @cached_property
    def shop_id(self) -> int:
        with session_scope(self.engine) as session:
            if self.shop_domain is None:
                shop = ensure_local_shop(session, self.settings.default_shop_domain)
            else:
                try:
                    shop = find_shop(session, self.shop_domain)
                except PluginError as exc:
                    raise click.ClickException(exc.message) from exc
            assert shop.id is not None
            return shop.id


pass_context = click.make_pass_decorator(Context)


@contextmanager
def clear_errors() -> Iterator[None]:
    """Domain errors become one readable line and exit status 1; no traceback."""
    try:
        yield
    except PluginError as exc:
        raise click.ClickException(exc.message) from exc


@click.group()
@click.option("--shop", "shop_domain", default=None, help="Shop domain (default: the embedded local shop).")
@click.pass_context
def main(ctx: click.Context, shop_domain: str | None) -> None:
    """Couponry: unique coupon code campaigns."""
    obj = ctx.obj = Context(settings=Settings.from_env(), shop_domain=shop_domain)
    ctx.call_on_close(obj.close)


@main.command()
@pass_context
def migrate_cmd(ctx: Context) -> None:
    """Apply database migrations."""
    engine = make_engine(ctx.settings.database_url)
    migrate.upgrade(engine)
    click.echo(f"database migrated ({engine.dialect.name})")


migrate_cmd.name = "migrate"


def serve_settings(settings: Settings, host: str | None, port: int | None, environ: Mapping[str, str]) -> Settings:
    """Settings for `serve --host/--port`: unless COUPONRY_PUBLIC_URL says otherwise, the app's
    public address follows where it listens, since the sandbox store and the in-process
    worker call the app back there."""
    host, port = host or settings.host, port or settings.port
    if "COUPONRY_PUBLIC_URL" in environ:
        return replace(settings, host=host, port=port)
    return replace(settings, host=host, port=port, public_url=f"http://{host}:{port}")


@main.command()
@click.option("--host", default=None, help="Interface to bind (default 127.0.0.1).")
@click.option("--port", default=None, type=int, help="Port (default 8000 or $PORT).")
@pass_context
def serve(ctx: Context, host: str | None, port: int | None) -> None:
    """Run the web app (and, on the embedded default, the worker) with uvicorn."""
    import uvicorn

    from plugin.runtime import settle_heap
    from plugin.web.app import create_app

    settings = serve_settings(ctx.settings, host, port, os.environ)
    engine = ctx.engine
    _ = ctx.shop_id  # the local shop exists before the first request
    app = create_app(settings, engine=engine)
    settle_heap()
    # The asyncio loop, not uvloop: as fast for this app, and fair between connections under
    # load (bench/loadgen.py: p99 ~30 ms against ~180-360 ms with uvloop at 50 connections).
    # proxy_headers=False: the app trusts X-Forwarded-For only from COUPONRY_TRUSTED_PROXIES (not uvicorn's loopback default)
    uvicorn.run(app, host=settings.host, port=settings.port, log_level=settings.log_level, loop="asyncio", proxy_headers=False)


# Command groups register themselves on `main` when imported.
from plugin.cli import codes as _codes  # noqa: E402, F401  (registers the commands)
from plugin.cli import distribution as _distribution  # noqa: E402, F401
from plugin.cli import jobs as _jobs  # noqa: E402, F401
from plugin.cli import keys as _keys  # noqa: E402, F401
from plugin.cli import redemptions as _redemptions  # noqa: E402, F401
from plugin.cli import sandbox as _sandbox  # noqa: E402, F401
from plugin.cli import shops as _shops  # noqa: E402, F401
from plugin.cli import sync as _sync  # noqa: E402, F401
from plugin.cli import webhooks as _webhooks  # noqa: E402, F401
