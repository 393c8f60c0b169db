"""Handing codes to people: claims and signed claim links, pushes to email/SMS providers,
partner pools, pool health and top-ups, referrals. Imports campaigns, shops, the store and the
pure core."""
