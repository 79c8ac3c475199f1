"""The one error vocabulary of the domain (and the cluster).

Every refusal carries a stable ``code`` for clients, a ``message`` for people
and a :class:`Category` declared where the error is: what kind of no it is.
Each face maps categories once (api/errors.py to HTTP statuses; the socket
face answers every one as an ack ``{"error": {code, message}}``).
"""

from __future__ import annotations

from enum import StrEnum


class Category(StrEnum):
    NOT_FOUND = "not_found"
    FORBIDDEN = "forbidden"
    CONFLICT = "conflict"
    INVALID = "invalid"  # the request is malformed
    UNPROCESSABLE = "unprocessable"  # well-formed, but the rules cannot take it
    RATE_LIMITED = "rate_limited"
    UNAVAILABLE = "unavailable"  # try again later
    UPSTREAM = "upstream"  # another node failed us


class DomainError(Exception):
    """A request the rules refuse; nothing changed."""

    category: Category = Category.INVALID

    def __init__(self, code: str, message: str, category: Category | str | None = None) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        if category is not None:
            self.category = Category(category)


__all__ = ["Category", "DomainError"]
