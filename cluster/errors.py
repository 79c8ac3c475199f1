"""What goes wrong between nodes. Not HTTP errors: each face says it its way."""

from __future__ import annotations


class ClusterError(Exception):
    """Another node could not be reached or refused; ``code`` is stable for clients."""

    code = "cluster_error"

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class OriginRefused(ClusterError):
    """The room's origin answered an edge's pull with an unexpected status."""

    code = "origin_refused"


class OriginUnreachable(ClusterError):
    """The room's origin could not be reached."""

    code = "origin_unreachable"


__all__ = ["ClusterError", "OriginRefused", "OriginUnreachable"]
