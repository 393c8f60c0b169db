"""The `couponry` command line: the root group, its shared context, serve and migrate.

Each area adds its commands in a module of this package, imported at the bottom."""

from __future__ import annotations

import errno
import os
import socket
from collections.abc import Iterator, Mapping
from contextlib import contextmanager, suppress
from dataclasses import dataclass, replace
from functools import cached_property
from typing import Any

import click
from sqlalchemy import Engine

from plugin.errors import ConfigError, PluginError
from plugin.settings import Settings
from plugin.shops.shops import ensure_local_shop, find_shop
from plugin.store import migrate
from plugin.store.units import open_engine, transaction


@dataclass
class Context:
    settings: Settings
    shop_domain: str | None

    @cached_property
    def engine(self) -> Engine:
        engine = open_engine(self.settings.database_url)
        try:
            if self.settings.is_sqlite:
                migrate.upgrade(engine)  # the embedded default keeps itself migrated
            else:
                migrate.require_current(engine)  # reachable, and migrated by `couponry migrate`
        except BaseException:
            engine.dispose()  # not cached, so `close` won't
            raise
        return engine

    def close(self) -> None:
        if "engine" in self.__dict__:  # only if a command opened it
            self.engine.dispose()

    @cached_property
    def shop_id(self) -> int:
        with transaction(self.engine) as session:
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


class Main(click.Group):
    """The root group. A configuration mistake (`ConfigError`), whichever command meets it,
    ends the command with its one line on stderr and exit status 1, as click's own errors do."""

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except ConfigError as exc:
            raise click.ClickException(str(exc)) from exc


@click.group(cls=Main)
@click.option("--shop", "shop_domain", default=None, help="Shop domain (default: the embedded local shop).")
@click.pass_context
def main(ctx: click.Context, shop_domain: str | None) -> None:
    """Couponry: unique coupon code campaigns."""
    obj = ctx.obj = Context(settings=Settings.from_env(), shop_domain=shop_domain)
    ctx.call_on_close(obj.close)


@main.command()
@pass_context
def migrate_cmd(ctx: Context) -> None:
    """Apply database migrations (the Procfile's `release`). Two at once are safe: the second
    waits for the first, then finds nothing to do."""
    engine = open_engine(ctx.settings.database_url)

    def waiting() -> None:
        click.echo("another release is migrating this database: waiting for it", err=True)

    try:
        done = migrate.upgrade(engine, on_wait=waiting)
    finally:
        engine.dispose()
    at = ", ".join(sorted(done.after)) or "no revision"
    if done.changed:
        was = ", ".join(sorted(done.before)) or "an empty database"
        click.echo(f"database migrated ({engine.dialect.name}): from {was} to {at}")
    else:
        click.echo(f"database already current ({engine.dialect.name}): at {at}")


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
    from plugin.web.server import server_options

    settings = serve_settings(ctx.settings, host, port, os.environ)
    # The port first: uvicorn binds only after the app's lifespan has started the in-process
    # worker, which could take a job before a port in use ended the process.
    with listening_socket(settings.host, settings.port) as sock:
        engine = ctx.engine
        _ = ctx.shop_id  # the local shop exists before the first request
        app = create_app(settings, engine=engine)
        settle_heap()
        # the asyncio loop, a concurrency limit, a deadline for each request, tokens kept out of the log
        config = uvicorn.Config(app, **server_options(settings))
        server = uvicorn.Server(config)
        click.echo(f"couponry listening on http://{settings.host}:{settings.port}", err=True)
        with suppress(KeyboardInterrupt):
            server.run(sockets=[sock])
    if not server.started:
        raise SystemExit(3)  # the app could not start (uvicorn's own status for that)


def listening_socket(host: str, port: int) -> socket.socket:
    """A TCP socket bound to host:port and listening, or a ConfigError saying why it can't be."""
    # IPPROTO_TCP named, not 0: asyncio turns Nagle off (TCP_NODELAY) only on accepted sockets whose
    # proto says TCP. Without it a keep-alive connection's every answer after the first waited
    # ~40 ms (Nagle against the client's delayed ACK: uvicorn writes the head and body apart).
    sock = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as uvicorn does: restarts reuse the port at once
    try:
        sock.bind((host, port))
        sock.listen(2048)  # ours alone from here (uvicorn's backlog)
    except OSError as exc:
        sock.close()
        raise ConfigError(_bind_problem(host, port, exc)) from None
    return sock


def _bind_problem(host: str, port: int, exc: OSError) -> str:
    where = f"{host}:{port}"
    if exc.errno == errno.EADDRINUSE:
        return (
            f"{where} is already in use (another couponry, or another program, listens there): "
            "stop it, or serve on another port with --port or PORT"
        )
    if exc.errno == errno.EACCES:
        return f"not allowed to listen on {where} (ports below 1024 need privileges): serve on another port with --port or PORT"
    if exc.errno == errno.EADDRNOTAVAIL or isinstance(exc, socket.gaierror):
        return f"{host} is not an address of this machine: choose one with --host or COUPONRY_HOST (0.0.0.0 for all)"
    return f"can't listen on {where} ({exc.strerror or exc}): choose another with --host/--port"


# Command groups register themselves on `main` when imported.
from plugin.cli import admin as _admin  # noqa: E402, F401  (registers the commands)
from plugin.cli import backup as _backup  # noqa: E402, F401
from plugin.cli import codes as _codes  # noqa: E402, F401
from plugin.cli import distribution as _distribution  # noqa: E402, F401
from plugin.cli import jobs as _jobs  # noqa: E402, F401
from plugin.cli import keys as _keys  # noqa: E402, F401
from plugin.cli import redemptions as _redemptions  # noqa: E402, F401
from plugin.cli import results as _results  # noqa: E402, F401
from plugin.cli import retention as _retention  # noqa: E402, F401
from plugin.cli import sandbox as _sandbox  # noqa: E402, F401
from plugin.cli import shops as _shops  # noqa: E402, F401
from plugin.cli import sync as _sync  # noqa: E402, F401
from plugin.cli import webhooks as _webhooks  # noqa: E402, F401
