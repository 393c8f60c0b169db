"""Outbound events and alert channels: merchants' endpoints (Standard Webhooks), their
deliveries and attempts, and where alerts go besides the admin (email, Slack).

The events themselves are written by every domain in its own transaction through
`plugin.store.eventlog.emit`; this package manages the endpoints and delivers (the worker's
`events.deliver` and `alerts.notify` jobs). Imports the store, shops (secret encryption) and
connectors; only the entry layer imports it."""
