"""The HTTP entry: the JSON API, webhooks, installs, claim pages and the sandbox mount; routes
parse input, call services and answer (problem+json on errors). Imports everything below it."""
