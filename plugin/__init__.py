"""Couponry: unique coupon code campaigns for shop platforms."""

__version__ = "0.1.0"
