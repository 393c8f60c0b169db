"""Reconciliation: the periodic comparison of each platform with our records (codes present or
absent, recent orders polled) and the repairs and alerts that follow. Imports orders, platforms,
distribution and the store."""
