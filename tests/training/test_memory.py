"""The malloc knob: applied on Linux/glibc, a no-op that says so elsewhere or when turned off."""

from __future__ import annotations

import sys

import numpy as np

from feddetox.training.memory import fix_malloc_threshold, trim


def test_fix_malloc_threshold_applies_on_glibc_and_memory_still_works():
    applied = fix_malloc_threshold(128)
    if sys.platform.startswith("linux") and applied:
        assert trim() in (True, False)
    assert fix_malloc_threshold(0) is False
    big = np.ones(1 << 20)  # an 8 MiB block, served by mmap now
    assert big.sum() == 1 << 20
