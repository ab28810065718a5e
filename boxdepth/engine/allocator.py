"""Keep freed tensor memory inside the training process (glibc malloc), so that large
tensors are not page-faulted in again at every step.

glibc serves an allocation above its mmap threshold (at most 32 MiB) with a fresh mmap and
returns it to the kernel on free; the heap top is trimmed back too. A training step frees
and reallocates the same large activations every iteration, so each step touches tens of
thousands of new pages (measured on the demo preset: 52 000 minor faults per step, about
0.3 s of a 2.9 s step on one thread). `keep_freed_memory()` sets, once per process:

    M_MMAP_MAX = 0             every block comes from the heap and is reused after free
    M_TRIM_THRESHOLD = INT_MAX the heap is not handed back to the kernel between steps

The peak resident memory stays what the step needs (freed blocks are reused, not added).
It changes nothing where the user chose the allocator: it is skipped when the environment
sets `MALLOC_*` or `GLIBC_TUNABLES` or preloads one (`LD_PRELOAD`, e.g. jemalloc), when
`BOXDEPTH_MALLOC=default`, and on any libc but glibc. Nothing is loaded: `mallopt` is looked
up in the C library the interpreter already runs on, when training starts, not at import.
"""
from __future__ import annotations

import ctypes
import os
import sys

M_TRIM_THRESHOLD, M_MMAP_MAX = -1, -4
INT_MAX = 2**31 - 1
_state: dict[str, str] = {}


def _skip_reason() -> str | None:
    if os.environ.get("BOXDEPTH_MALLOC", "keep") == "default":
        return "BOXDEPTH_MALLOC=default"
    chosen = sorted(k for k in os.environ
                    if k.startswith("MALLOC_") or k in ("GLIBC_TUNABLES", "LD_PRELOAD") and os.environ[k])
    if chosen:
        return f"the environment sets the allocator ({', '.join(chosen)})"
    if not sys.platform.startswith("linux"):
        return f"not glibc ({sys.platform})"
    return None


def keep_freed_memory() -> str:
    """Tune glibc malloc as the module doc says; returns what was done, for the logs:
    "kept freed memory (glibc X.Y)" or "default allocator: <why>". Idempotent."""
    if "result" in _state:
        return _state["result"]
    reason = _skip_reason()
    if reason is None:
        try:
            libc = ctypes.CDLL(None)
            version = libc.gnu_get_libc_version
            version.restype = ctypes.c_char_p
            mallopt = libc.mallopt
        except (OSError, AttributeError):
            reason = "not glibc (no gnu_get_libc_version / mallopt)"
        else:
            mallopt.argtypes, mallopt.restype = (ctypes.c_int, ctypes.c_int), ctypes.c_int
            if mallopt(M_MMAP_MAX, 0) != 1 or mallopt(M_TRIM_THRESHOLD, INT_MAX) != 1:
                reason = "mallopt refused the settings"
            else:
                _state["result"] = f"kept freed memory (glibc {version().decode()})"
                return _state["result"]
    _state["result"] = f"default allocator: {reason}"
    return _state["result"]
