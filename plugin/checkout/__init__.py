"""The checkout: validate, reserve, redeem and roll back a code, the redemption records and
refunds' effect on them, and the guessing limits. Imports distribution (referral rewards),
campaigns, the store and the pure core."""
