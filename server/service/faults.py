"""Fault injection for the reliability tests. Every hook is OFF unless its environment variable is set;
never set one in production.

`FEDDETOX_FAULT_PAUSE_BEFORE_AGGREGATE_COMMIT=<file>`: the scheduler, having aggregated a round inside the
closing transaction (new version written to the blob store, rows changed but not committed), creates
`<file>` and then waits for ever without committing. A test waits for the file and SIGKILLs the process
there, i.e. during aggregation; the transaction was never committed, so the restarted coordinator redoes it.
"""

from __future__ import annotations

import os
import threading
from pathlib import Path

PAUSE_BEFORE_AGGREGATE_COMMIT = "FEDDETOX_FAULT_PAUSE_BEFORE_AGGREGATE_COMMIT"


def pause_point(variable: str, session=None) -> None:
    """If the environment variable `variable` names a file: flush `session` (so the pending changes are in the
    open transaction), create the file, then block this thread for ever. Else nothing."""
    marker = os.environ.get(variable)
    if not marker:
        return
    if session is not None:
        session.flush()
    Path(marker).write_text(f"{os.getpid()}\n")
    threading.Event().wait()  # until the process is killed
