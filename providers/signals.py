"""Signals the catalogue sends; other apps listen without the catalogue importing them."""

from django.dispatch import Signal

# Sent after a commit that may let waiting leads through (a provider resumed, a quota raised,
# a membership added). Argument: service_ids, a list of the services affected.
capacity_added = Signal()
