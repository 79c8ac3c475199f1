"""What goes wrong between nodes: domain errors of category ``upstream``, not
HTTP errors; each face says them its way."""

from __future__ import annotations

from rooms.errors import Category, DomainError


class ClusterError(DomainError):
    """Another node could not be reached or refused; ``code`` is stable for clients."""

    code = "cluster_error"
    category = Category.UPSTREAM

    def __init__(self, message: str) -> None:
        super().__init__(self.code, message)


class OriginRefused(ClusterError):
    """The room's origin answered an edge's pull with an unexpected status."""

    code = "origin_refused"


class OriginUnreachable(ClusterError):
    """The room's origin could not be reached."""

    code = "origin_unreachable"


__all__ = ["ClusterError", "OriginRefused", "OriginUnreachable"]
