"""The store: the engine and sessions, the SQLModel tables (the sandbox shop's too), the migrations,
and the atomic operations (conditional updates, bulk writes, the outbox's enqueue and SKIP LOCKED
claims, shared rate-limit state). Every dialect difference lives here. Imports settings and the
pure core only. The outbox is here rather than in `jobs` because services enqueue in their own
transaction; `jobcontext` is the handler contract the worker and the services share."""
