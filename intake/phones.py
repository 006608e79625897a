"""Phone numbers as SPEC §3 defines them: separators removed, a leading + kept, 7-15 digits."""

from __future__ import annotations

import re

SEPARATORS = str.maketrans("", "", " -.()")
# ASCII digits only: str.isdigit() would also accept "²" or Arabic-Indic digits.
NORMALISED = re.compile(r"\+?[0-9]{7,15}")


def normalise_phone(raw: str) -> str | None:
    """Return the number without spaces, dashes, dots and parentheses, or None if invalid.

    A leading + is kept, so "+1555…" and "1555…" stay different numbers.
    """
    phone = raw.translate(SEPARATORS)
    return phone if NORMALISED.fullmatch(phone) else None
