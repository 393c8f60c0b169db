"""The checkout: validate, reserve, redeem and roll back a code, the redemption records and
refunds' effect on them, the guessing limits, and onsite reveal and basket checks. Imports distribution (referral rewards),
campaigns, the store and the pure core."""
