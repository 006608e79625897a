"""Signals the engine sends; other apps listen without the engine importing them."""

from django.dispatch import Signal

# Sent INSIDE the transaction of an allocation whose statement created delivery rows (only for
# providers with a delivery endpoint; delivery/). Argument: delivery_ids. A receiver that
# raises rolls the allocation back, so a committed lead always has its delivery jobs.
deliveries_created = Signal()
