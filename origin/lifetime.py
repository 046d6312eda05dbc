"""Processes that do not outlive their parent (Linux ``PR_SET_PDEATHSIG``).

``tandem up`` starts each child in its own session, so that Ctrl-C on the terminal reaches the
supervisor alone and it can stop the children in order. Then nothing ends them if the
supervisor itself is killed (SIGKILL, OOM): each child asks the kernel for SIGTERM when its
parent dies and stops as on any SIGTERM. The origin's pre-forked workers do the same, so a
killed origin leaves no worker holding its port for the origin that replaces it.

Imports nothing of ours.
"""

from __future__ import annotations

import ctypes
import os
import signal

PR_SET_PDEATHSIG = 1  # <linux/prctl.h>
SUPERVISOR_ENV = "TANDEM_SUPERVISOR"  # set by ``tandem up`` for its children: its own pid


def die_with_parent(parent: int, sig: int = signal.SIGTERM) -> None:
    """Get ``sig`` when the parent dies. Called after the fork: if ``parent`` died before
    the request was made (this process was re-parented already), ``sig`` comes at once."""
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(PR_SET_PDEATHSIG, int(sig), 0, 0, 0)
    except (OSError, AttributeError):  # not Linux with a C library: nothing to ask for
        return
    if os.getppid() != parent:
        os.kill(os.getpid(), sig)
