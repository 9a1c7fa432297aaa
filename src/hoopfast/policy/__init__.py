"""Statement policy: classification of SQL text for allow/deny/review decisions."""

from hoopfast.policy.classify import CLASSES, Classification, classify

__all__ = ["CLASSES", "Classification", "classify"]
