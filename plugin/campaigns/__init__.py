"""Campaigns and their codes' birth: create, edit and move a campaign through its states,
generate and import batches of codes, and queue what a campaign change asks of its shop platform
(`platform`: the sync jobs, in the caller's transaction). Imports the store and the pure core."""
