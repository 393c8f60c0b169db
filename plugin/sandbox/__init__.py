"""The sandbox store: a small local shop platform for test mode (API in README.md), a separate
shop living in the same process. It imports only the store, the settings and the pure core, and
no domain imports it: `connectors/sandbox.py` talks to it over HTTP like any platform.

store      discounts, codes, orders, knobs and the webhook queue (the platform's logic)
api        the Starlette sub-app mounted at /sandbox: REST API, auth, rate limit, fault injection
deliverer  signs and delivers order webhooks with retries, duplicates, reordering and delays

Its tables are `plugin.store.sandbox_models`; the secrets it shares with the app are
`plugin.shared_secrets`.
"""
