"""The worker: claims jobs from the outbox, runs the handler registered for each kind, retries with
backoff or dead-letters, and runs the periodic sweeps. It is assembled here, above the services
whose handlers it runs; no service imports it."""
