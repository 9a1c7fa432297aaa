"""Coverage-guided fuzzing of the masking engine's row decoder with atheris.

Each input is cut into a rule set and a buffer (often a well-formed DataRow
header around fuzzed values, so the fuzzer gets past the first checks). The
pure-Python reference is instrumented, so its branches guide the search;
the compiled engine runs on the same input and must agree byte for byte:
the same output, or ValueError from both. Anything else (another exception,
a panic surfacing as pyo3's PanicException, a different result) is a crash.

    python fuzz/mask_rows.py -runs=200000 -max_len=512       # a bounded run
    python fuzz/mask_rows.py fuzz/corpus                     # open-ended, keeps a corpus

tests/test_mask_engine.py runs it briefly on every test run.
"""

from __future__ import annotations

import struct
import sys

import atheris

with atheris.instrument_imports(include=["hoopfast.core._mask"]):
    from hoopfast.core import _mask

import hoopfast_core

KEY = b"fuzz-key-0123456789abcdef0123456"
#: (strategy, format, type OID) combinations the engine accepts.
RULES: list[tuple[str, int, int]] = [
    *((s, 0, 25) for s in _mask.STRATEGIES),
    ("redact", 0, 3802),
    ("detect", 0, 114),
    ("hash", 0, 114),
    ("null", 1, 23),
    ("default", 1, 1184),
    ("default", 0, 1082),
    ("default", 1, 1700),
]
DETECTORS = list(_mask.DETECTOR_NAMES)


def _plan_columns(
    fdp: atheris.FuzzedDataProvider,
) -> list[tuple[str, int, int, list[str], int, int] | None]:
    columns: list[tuple[str, int, int, list[str], int, int] | None] = []
    for _ in range(fdp.ConsumeIntInRange(0, 4)):
        if fdp.ConsumeBool():
            columns.append(None)
            continue
        strategy, fmt, oid = RULES[fdp.ConsumeIntInRange(0, len(RULES) - 1)]
        detectors = [d for d in DETECTORS if fdp.ConsumeBool()] or ["email"]
        columns.append(
            (
                strategy,
                fmt,
                oid,
                detectors,
                fdp.ConsumeIntInRange(0, 4),
                fdp.ConsumeIntInRange(0, 4),
            )
        )
    return columns


def _buffer(fdp: atheris.FuzzedDataProvider, ncols: int) -> bytes:
    if fdp.ConsumeBool():
        return fdp.ConsumeBytes(fdp.ConsumeIntInRange(0, 256))  # raw garbage
    rows = []
    for _ in range(fdp.ConsumeIntInRange(1, 3)):
        count = ncols if fdp.ConsumeIntInRange(0, 9) else fdp.ConsumeIntInRange(0, 6)
        body = struct.pack("!h", count)
        for _ in range(count):
            kind = fdp.ConsumeIntInRange(0, 9)
            if kind == 0:
                body += struct.pack("!i", -1)
            elif kind == 1:
                body += struct.pack("!i", fdp.ConsumeIntInRange(-3, 300))  # a lying length
            else:
                value = fdp.ConsumeBytes(fdp.ConsumeIntInRange(0, 64))
                body += struct.pack("!i", len(value)) + value
        if fdp.ConsumeIntInRange(0, 9) == 0:
            body += fdp.ConsumeBytes(3)  # trailing bytes
        length = len(body) + 4 if fdp.ConsumeIntInRange(0, 9) else fdp.ConsumeIntInRange(0, 80)
        rows.append(b"D" + struct.pack("!i", length) + body)
    return b"".join(rows)


def _run(plan: object, buf: bytes) -> bytes | str:
    try:
        return plan.apply(buf)  # type: ignore[attr-defined, no-any-return]
    except ValueError:
        return "ValueError"


def test_one_input(data: bytes) -> None:
    fdp = atheris.FuzzedDataProvider(data)
    columns = _plan_columns(fdp)
    buf = _buffer(fdp, len(columns))
    reference = _run(_mask.MaskPlan(columns, KEY), buf)
    compiled = _run(hoopfast_core.MaskPlan(columns, KEY), buf)
    if reference != compiled:
        raise AssertionError(f"compiled {compiled!r} != reference {reference!r} for {buf!r}")


def main() -> None:
    atheris.Setup(sys.argv, test_one_input)
    atheris.Fuzz()


if __name__ == "__main__":
    main()
