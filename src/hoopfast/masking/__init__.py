"""Masking of result values inside the gateway (docs/masking.md).

- :mod:`.catalog`: where a result column comes from (table OID + attribute
  number -> schema.table.column), read from the upstream and cached;
- :mod:`.rules`: the configured rules for one person on one connection,
  compiled into a :class:`hoopfast.core.MaskPlan` per RowDescription;
- :mod:`hoopfast.proxy.postgres.resultmask`: follows the protocol so that every DataRow, COPY line,
  error and notice is masked with the plan of the result it belongs to.
"""
