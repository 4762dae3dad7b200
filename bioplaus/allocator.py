"""Keep freed memory for reuse: the C allocator's settings for large CPU batches.

On Linux with glibc, a freed block of more than the mmap threshold (128 KiB to 32 MiB, adapted
at run time) goes back to the operating system at once, and so does free memory at the top of the
heap beyond the trim threshold. A training step on a large batch allocates and frees hundreds of
megabytes of activations and gradients; each time the next step asks for them again the kernel
hands out fresh zeroed pages, one page fault per 4 KiB. `keep_freed_memory` tells glibc
(``mallopt``) to serve large blocks from the heap (``M_MMAP_MAX = 0``) and never to trim it
(``M_TRIM_THRESHOLD = -1``), so freed blocks are reused by the next step. The cost: the process
keeps its peak memory until it exits.

The engine calls it once when it builds a run on the CPU. ``BIOPLAUS_MALLOC=default`` in the
environment leaves the allocator as it is; another value than those `setting` lists is refused
when the run's config is validated. Elsewhere (no glibc: macOS, Windows, musl) it does
nothing.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os
import sys

#: mallopt parameters of glibc's <malloc.h>
M_TRIM_THRESHOLD = -1
M_MMAP_MAX = -4
#: the environment variable that switches the setting off (value ``default``)
ENV = "BIOPLAUS_MALLOC"

#: values of ``BIOPLAUS_MALLOC``: keep freed memory (the default) or leave the allocator alone
KEEP = ("", "keep", "on", "1", "true", "yes")
DEFAULT = ("default", "off", "0", "false", "no")

_applied: bool | None = None


def setting() -> str:
    """``BIOPLAUS_MALLOC`` as given (stripped, lower case); `UsageError` for a value that is
    neither a keep value (unset, ``keep``, ``on``, ``1``, ``true``, ``yes``) nor a default value
    (``default``, ``off``, ``0``, ``false``, ``no``)."""
    from bioplaus.errors import UsageError

    value = os.environ.get(ENV, "").strip().lower()
    if value not in KEEP + DEFAULT:
        raise UsageError(f"{ENV}={os.environ[ENV]!r} in the environment: use {ENV}=default to leave "
                         f"the C allocator as it is, or unset it (or {ENV}=keep) to keep freed memory.")
    return value


def keep_freed_memory() -> bool:
    """Set glibc's allocator to keep freed memory (see the module doc); once per process.

    Returns whether the setting is in force: False without glibc, or with
    ``BIOPLAUS_MALLOC=default``. Never raises.
    """
    global _applied
    if _applied is not None:
        return _applied
    _applied = False
    if os.environ.get(ENV, "").strip().lower() not in KEEP:  # a bad value is refused by `setting`
        return False
    if not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        libc.gnu_get_libc_version  # noqa: B018 — glibc only: musl has a different allocator
        mallopt = libc.mallopt
    except (OSError, AttributeError):
        return False
    mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
    mallopt.restype = ctypes.c_int
    _applied = mallopt(M_MMAP_MAX, 0) == 1 and mallopt(M_TRIM_THRESHOLD, -1) == 1
    return _applied
