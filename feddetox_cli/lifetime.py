"""A child of a simulation ends with it: on Linux the kernel sends it SIGTERM when its parent dies.

`feddetox_cli.simulation.federation.spawn` puts the parent's pid in FEDDETOX_PARENT_PID; the child calls
`die_with_parent()` first thing. A simulation killed with SIGKILL (or SIGTERM inside a C call, where its
`finally` blocks never run) then leaves no coordinator holding its ports and no device training on.
"""

from __future__ import annotations

import os
import signal
import sys

PARENT_PID_ENV = "FEDDETOX_PARENT_PID"
_PR_SET_PDEATHSIG = 1


def die_with_parent(environ: dict[str, str] | None = None) -> bool:
    """Arm PR_SET_PDEATHSIG when FEDDETOX_PARENT_PID names this process's parent; True if armed.

    Exits at once when the named parent is already gone (it died before the signal was armed). The variable
    is removed from the environment.
    Elsewhere than Linux, or without the variable, nothing happens.
    """
    # taken out, so that this process's own children do not inherit a pid that is not their parent's
    value = (os.environ if environ is None else environ).pop(PARENT_PID_ENV, None)
    if not value or not sys.platform.startswith("linux"):
        return False
    import ctypes

    try:
        prctl = ctypes.CDLL(None, use_errno=True).prctl
    except (OSError, AttributeError):
        return False
    prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)
    if str(os.getppid()) != value.strip():
        sys.exit(f"feddetox: the process that started this one ({value}) is gone; exiting")
    return True
