"""A maintenance window: the daily hours (UTC) when a Plan or a Budget lets VMs work.

Outside it no VM of the plan (or touching the budget) starts, and a running one
finishes the step it is in and waits at the next step until the window opens
again (``ferry.migration_controller.scheduler``).
"""

from __future__ import annotations

from datetime import datetime, time, timedelta

from pydantic import BaseModel, ConfigDict


class Window(BaseModel):
    """Daily, in UTC; ``start`` after ``end`` spans midnight (22:00 → 04:00)."""

    model_config = ConfigDict(extra="forbid", populate_by_name=True, frozen=False)

    start: time
    end: time

    def open_at(self, when: datetime) -> bool:
        now = when.time().replace(tzinfo=None)
        if self.start <= self.end:
            return self.start <= now < self.end
        return now >= self.start or now < self.end

    def next_open(self, when: datetime) -> datetime:
        """When the window next opens (``when`` itself if it is open then)."""
        if self.open_at(when):
            return when
        opens = datetime.combine(when.date(), self.start, when.tzinfo)
        return opens if opens > when else opens + timedelta(days=1)

    def __str__(self) -> str:
        return f"{self.start}-{self.end} UTC"
