"""Dates and times as operators read them, everywhere Django formats one (the admin's lists and
pages included): ISO-like, to the second. Django's English defaults ("Dec. 7, 2026, 11:59 a.m.")
hide the seconds, which tell apart the attempts of one delivery or the leads of one burst."""

DATETIME_FORMAT = "Y-m-d H:i:s"
SHORT_DATETIME_FORMAT = "Y-m-d H:i:s"
DATE_FORMAT = "Y-m-d"
SHORT_DATE_FORMAT = "Y-m-d"
TIME_FORMAT = "H:i:s"
