"""Orders as platforms report them: webhook deliveries stored and deduplicated, turned into
redemptions once (singly or in bulk), rolled back by cancellations and refunds; privacy requests
and uninstalls delivered the same way. Imports platforms, checkout, distribution, shops, the store."""
