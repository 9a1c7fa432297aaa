"""A session's statements as the audit trail records them.

The trail itself is in the core (hoopfast.core._trail, the reference, and
its Cython build ext/_ctrail.pyx; hoopfast.core picks one), since the relay
pump feeds it every message of a recorded session: read _trail's docstring
for what it follows and records. This module is the session's side of it:
which messages the trail must see, and the verdict of a statement it
cannot attribute (the core does not import the policy).
"""

from __future__ import annotations

from typing import Any

from hoopfast import core
from hoopfast.core import Caps, SessionLog, Statement, Tally
from hoopfast.policy.guard import ALLOW
from hoopfast.proxy.postgres import messages as m

__all__ = ["CLIENT_TYPES", "SERVER_TYPES", "Caps", "Statement", "Trail"]

#: Client messages the trail must see beyond what the guardrails intercept.
CLIENT_TYPES = bytes([m.BIND, m.EXECUTE, m.SYNC, m.DESCRIBE, m.CLOSE, m.COPY_DONE, ord("f")])
#: Server messages it must see (ErrorResponse is intercepted already).
SERVER_TYPES = bytes(
    [
        m.ROW_DESCRIPTION,
        m.DATA_ROW,
        m.COMMAND_COMPLETE,
        m.EMPTY_QUERY,
        m.PORTAL_SUSPENDED,
        m.READY_FOR_QUERY,
        m.PARSE_COMPLETE,
        m.BIND_COMPLETE,
        m.CLOSE_COMPLETE,
        m.NO_DATA,
        ord("t"),  # ParameterDescription
        ord("V"),  # FunctionCallResponse
        # COPY: only counted (the rows come from the tag), never kept.
        ord("G"),  # CopyInResponse
        m.COPY_OUT_RESPONSE,
        m.COPY_BOTH_RESPONSE,
        m.COPY_DATA,
        m.COPY_DONE,
    ]
)


class Trail(core.Trail):
    """The selected core's Trail, made as the session makes it: a statement
    it cannot attribute (an Execute of a portal it never saw bound, a Bind
    of a statement it never saw parsed) is recorded with ALLOW."""

    def __init__(
        self,
        codec: str,
        caps: Caps,
        mask_text: Any,
        done: Any,
        log: SessionLog | None = None,
        unrecorded: Any = None,
        tally: Tally | None = None,
    ) -> None:
        super().__init__(codec, caps, mask_text, done, ALLOW, log, unrecorded, tally)
