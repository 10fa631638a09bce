"""Calendar arithmetic the standard library lacks: adding months (and years) to a date."""

from __future__ import annotations

import calendar
from datetime import date
from typing import TypeVar

D = TypeVar("D", bound=date)  # a date or a datetime; the result has the same type


def add_months(moment: D, months: int) -> D:
    """The same day `months` later (or earlier), clamped to the month's last day: Jan 31 + 1 month
    is Feb 28 (or 29)."""
    year, month = divmod(moment.month - 1 + months, 12)
    year += moment.year
    day = min(moment.day, calendar.monthrange(year, month + 1)[1])
    return moment.replace(year=year, month=month + 1, day=day)
