"""The live events of SPEC §6: one channel, four types, small JSON payloads of ids and numbers.

Consumers derive quota changes themselves: each provider of a ``lead.allocated`` lost one unit,
and the providers of a ``quota.reset`` (``null``: all of them) are back to their full quota.
``provider.updated`` is sent when the catalogue changes a provider (status, quota or name).
``delivery.updated`` is sent when an attempt to deliver a lead to a provider ends (past the
first few, a repeated failure only every Nth: docs/DELIVERY.md), or a resend starts one:
{delivery_id, lead_id, provider_id, channel, status, attempts}.
``lead.returned`` is sent when a provider returns a lead, and ``return.decided`` when the
return is approved or rejected (at once, for an auto-approved one): both
{return_id, lead_id, provider_id, reason, status}, and ``credited`` on return.decided.
"""

CHANNEL = "dashboard"

LEAD_ALLOCATED = "lead.allocated"
LEAD_WAITING = "lead.waiting"
# A waiting lead that waited longer than LEAD_MAX_WAIT: {lead_id, service_id}.
LEAD_EXPIRED = "lead.expired"
QUOTA_RESET = "quota.reset"
PROVIDER_UPDATED = "provider.updated"
DELIVERY_UPDATED = "delivery.updated"
LEAD_RETURNED = "lead.returned"
RETURN_DECIDED = "return.decided"
EVENT_TYPES = (
    LEAD_ALLOCATED,
    LEAD_WAITING,
    LEAD_EXPIRED,
    QUOTA_RESET,
    PROVIDER_UPDATED,
    DELIVERY_UPDATED,
    LEAD_RETURNED,
    RETURN_DECIDED,
)
# The types the dashboard's live feed lists; provider.updated only refreshes a row.
FEED_TYPES = (
    LEAD_ALLOCATED,
    LEAD_WAITING,
    LEAD_EXPIRED,
    QUOTA_RESET,
    LEAD_RETURNED,
    RETURN_DECIDED,
)
