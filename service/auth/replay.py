"""What the JWT check needs from storage to refuse a replayed `jti` across all workers."""

from __future__ import annotations

from datetime import datetime
from typing import Protocol


class ReplayCache(Protocol):
    async def remember_jti(self, issuer: str, jti: str, expires_at: datetime) -> bool:
        """Record (issuer, jti) until `expires_at`; False when it was already recorded and has not
        expired yet (a replay)."""
        ...
