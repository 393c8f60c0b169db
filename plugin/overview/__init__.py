"""What a merchant's home page shows: whether the app is set up and working, and key figures.
Reads across the domains through bounded queries (never a whole-table count). Imports the store,
the settings and the connector registry's names."""
