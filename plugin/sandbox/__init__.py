"""The sandbox store: a small local shop platform for test mode (API in README.md).

models     its own tables (prefix sandbox_)
keys       the signing secret and per-shop access tokens it shares with the app
store      discounts, codes, orders, knobs and the webhook queue (the platform's logic)
api        the Starlette sub-app mounted at /sandbox: REST API, auth, rate limit, fault injection
deliverer  signs and delivers order webhooks with retries, duplicates, reordering and delays
"""
