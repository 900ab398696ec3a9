"""What keeps a benchmark honest: limits set for the load generator, and no figure over wrong answers.

A rate measured over 429s, 404s or dropped connections is the rate of refusing, not of serving: every row
goes through ``require_clean`` before it is printed, and a row that fails it stops the run with exit
status 1 and one line naming the row and what its requests were answered (``run`` does the exiting).
"""

from __future__ import annotations

import sys
from collections.abc import Callable, Mapping

__all__ = ["NEVER_REFUSING_LIMITS", "BenchFailure", "require_clean", "run"]

# One user (or a handful) drives thousands of requests a second in a benchmark: limits that never refuse,
# set explicitly in every stack a benchmark starts (the limiter still runs, so its cost is in the figures;
# `python -m bench.limiter` measures it alone). Per-second windows keep the moving window's per-key list
# short.
NEVER_REFUSING_LIMITS = {
    "RATE_LIMIT_UPLOAD_URLS": "1000000/second",
    "RATE_LIMIT_SENDS": "1000000/second",
    "RATE_LIMIT_CONVERSATIONS": "1000000/second",
    "RATE_LIMIT_PARTICIPANT_CHANGES": "1000000/second",
    "RATE_LIMIT_READ_RECEIPTS": "1000000/second",
    "RATE_LIMIT_SOCKET_CONNECTS": "1000000/second",
    "RATE_LIMIT_SOCKET_MESSAGES": "1000000/second",
    "MAX_PENDING_UPLOADS": "100000000",
    "UPLOAD_BYTES_PER_DAY": str(2**50),
}


class BenchFailure(RuntimeError):
    """A measurement whose requests were not the intended answers: there is no honest figure to print."""


def require_clean(
    row: str, *, errors: int, requests: int, statuses: Mapping[int, int] | None = None, expected: int = 0
) -> None:
    """Raise ``BenchFailure`` when any request of ``row`` failed (``errors``: non-2xx/3xx, socket errors,
    timeouts) or, given ``statuses``, was answered anything but ``expected``; or when none completed."""
    wrong = {status: n for status, n in (statuses or {}).items() if status != expected}
    if requests <= 0:
        raise BenchFailure(f"{row}: no request completed")
    if errors or wrong:
        answers = ", ".join(f"{n} x {status}" for status, n in sorted(wrong.items()))
        raise BenchFailure(
            f"{row}: {errors + sum(wrong.values())} of {requests} requests were not the intended answer"
            f"{f' ({answers})' if answers else ''}: no figure printed, it would measure the failures"
        )


def run(main: Callable[[], None]) -> None:
    """Run a benchmark's ``main``; a ``BenchFailure`` ends the process with status 1 and its message."""
    try:
        main()
    except BenchFailure as failure:
        print(f"\nBENCH FAILED: {failure}", file=sys.stderr, flush=True)
        raise SystemExit(1) from None
