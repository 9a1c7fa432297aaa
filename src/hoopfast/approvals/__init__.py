"""Just-in-time approvals: reviews of held statements and time-boxed access
grants, decided by a second person (docs/approvals.md)."""

from hoopfast.approvals.service import Approvals, ReviewError, statement_hash

__all__ = ["Approvals", "ReviewError", "statement_hash"]
