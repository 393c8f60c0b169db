"""The app factory: routes, middleware and a lifespan holding the engine and one HTTP client."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from pydantic import ValidationError
from sqlalchemy import Engine
from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.routing import Mount, Route

from connectors.egress import AddressPolicy, public_client, shared_client
from plugin.checkout.ratelimit import GuessLimits
from plugin.errors import PluginError
from plugin.settings import Settings
from plugin.store.units import open_engine
from plugin.web import admin, api, appproxy, callbacks, health, hooks, install, metrics, storefront
from plugin.web import distribution as distribution_web
from plugin.web.admin.signinlimit import SignInLimits
from plugin.web.background import Background
from plugin.web.clientaddr import TrustedProxies, parse_networks
from plugin.web.hotpaths import App
from plugin.web.limits import BodyLimits
from plugin.web.openapi import openapi_json
from plugin.web.problems import http_error_handler, plugin_error_handler, validation_error_handler


def create_app(settings: Settings, *, engine: Engine | None = None) -> App:
    """Build the ASGI app. Tests pass their own engine; `serve` lets the app make one."""
    engine = engine or open_engine(settings.database_url)
    background = Background(settings, engine)  # webhook processing, in-process worker, sandbox store

    @asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        install.warn_insecure_public_url(settings)
        async with (
            shared_client(app.state.store_policy) as client,  # WooCommerce calls marked: public addresses only
            public_client(app.state.store_policy) as store_client,  # hosts strangers name (install flows)
        ):
            app.state.http = client
            app.state.store_http = store_client
            async with background.running(client):
                try:
                    yield
                finally:
                    await app.state.webhook_refusals.drain()  # refusals for size not yet recorded

    routes = [
        Route("/healthz", health.healthz, methods=["GET"]),  # touches nothing: a database outage restarts nothing
        Route("/readyz", health.readyz, methods=["GET"]),  # database, migrations, Redis
        Route("/metrics", metrics.metrics, methods=["GET"]),
        Route(f"{api.PREFIX}/openapi.json", openapi_json, methods=["GET"]),
        Mount(api.PREFIX, routes=api.routes()),
        *distribution_web.routes(),  # signed pull URLs and claim pages
        *storefront.routes(),  # the storefront script
        *appproxy.routes(),  # Shopify's App Proxy: the script on a Shopify shop's own domain
        *callbacks.routes,  # providers' delivery status
        *install.routes,
        *admin.routes(),  # the merchant admin at /admin (manifest.json's application URL)
        *background.routes(),
    ]
    app = App(
        trusted_proxies=TrustedProxies(parse_networks(settings.trusted_proxies)),
        routes=routes,
        lifespan=lifespan,
        exception_handlers={
            PluginError: plugin_error_handler,
            ValidationError: validation_error_handler,
            HTTPException: http_error_handler,
        },
    )
    app.add_hot_routes([*api.hot_routes(api.PREFIX), *hooks.routes])  # platforms' order webhooks too
    app.body_limits = BodyLimits.from_settings(settings, api.larger_bodies(api.PREFIX), on_refused={hooks.PREFIX: hooks.refused})
    app.state.settings = settings
    app.state.engine = engine
    app.state.queue_metrics = metrics.queue_registry(engine)  # the job queue, read at each scrape
    app.state.limiter = GuessLimits(
        settings.redis_url,
        per_shopper=settings.failed_code_limit,
        per_unnamed_key=settings.failed_code_limit_unnamed,
        shop_alarm=settings.guessing_alert,
    )
    app.state.sign_in_limits = SignInLimits.from_settings(app.state.limiter.storage, settings)  # admin sign-ins
    app.state.store_policy = AddressPolicy(allow_private=settings.allow_private_stores)
    app.state.background = background
    app.state.processor = background.processor
    app.state.webhook_shops = {}  # (platform, shop domain) -> shop id, for webhook routing
    app.state.webhook_refusals = hooks.Refusals()  # deliveries refused for size, waiting to be recorded
    return app
