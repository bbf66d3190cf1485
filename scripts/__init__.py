"""Maintenance scripts (mutation testing); a package only so that mypy checks them."""
