"""Shops (tenants) and access to them: the shop record and its preferences, API keys with
scopes, and platform tokens encrypted at rest. Imports the store."""
