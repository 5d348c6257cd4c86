"""Marketing spend reports: what a channel (or campaign) cost over a period.

Sent to the optional ``funnel.spend`` topic, they let the pipeline report cost
per acquisition and return on spend per channel. The latest report for a
(channel, campaign, currency, period) replaces earlier ones, so a corrected
figure is simply sent again.
"""

from __future__ import annotations

from datetime import datetime
from decimal import Decimal
from typing import Annotated
from uuid import UUID

from pydantic import BaseModel, ConfigDict, Field, StringConstraints, model_validator

from schemas.events import Currency, Dimension, Timestamp

__all__ = ["SpendReport"]


class SpendReport(BaseModel):
    """Spend of one channel (optionally one campaign) over [period_start, period_end)."""

    model_config = ConfigDict(extra="ignore", frozen=True, allow_inf_nan=False)

    event_id: UUID
    channel: Annotated[str, StringConstraints(strip_whitespace=True, min_length=1, max_length=128)]
    campaign: Dimension | None = None
    amount: Annotated[Decimal, Field(ge=0, max_digits=18, decimal_places=4)]
    currency: Currency
    period_start: Timestamp
    period_end: Timestamp

    @model_validator(mode="after")
    def _period(self) -> SpendReport:
        if self.period_end <= self.period_start:
            raise ValueError("period_end must be after period_start")
        return self

    @property
    def period(self) -> tuple[datetime, datetime]:
        return self.period_start, self.period_end
