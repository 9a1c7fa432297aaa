"""The HTTP admin API: session trails for auditors (and metrics, health).

It runs on the gateway's own event loop (:mod:`hoopfast.api.server`) and
authenticates with the same bearer tokens as the PostgreSQL side, so there
is one identity and one place that decides who may read what.
"""

from __future__ import annotations

from hoopfast.api.app import create_app
from hoopfast.api.server import ApiServer, start_api

__all__ = ["ApiServer", "create_app", "start_api"]
