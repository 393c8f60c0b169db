"""The checkout: validate, reserve, redeem and roll back a code, the redemption records and
refunds' effect on them, the guessing limits, and onsite reveal and basket checks (`onsite`).
Imports distribution (referral rewards, claim links), campaigns, the store and the pure core."""
