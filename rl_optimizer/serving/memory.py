"""Giving the heap back after large requests, and reading a process's resident memory.

glibc's malloc keeps freed memory in its arenas: after a burst of 1M-coordinate requests (tens of
MB each, spread over the worker threads' arenas) the server's RSS stays at its peak, and grows
with each burst that fragments the arenas differently. `malloc_trim(0)` hands the free pages back.
`HeapTrimmer` calls it from a thread of its own once large requests have finished, at most once
per `min_interval` seconds and always after the last one, so a request never waits for it.
"""

from __future__ import annotations

import ctypes
import functools
import logging
import threading

_log = logging.getLogger(__name__)

TRIM_AFTER_BYTES = 1 << 20
"""Requests with this many bytes of tensors or more are followed by a trim."""


@functools.cache
def _malloc_trim():
    try:
        return ctypes.CDLL(None).malloc_trim  # glibc only (not musl, not macOS)
    except (OSError, AttributeError):
        return None


def malloc_trim() -> bool:
    """Returns free heap pages to the OS; False where the C library has no `malloc_trim`."""
    trim = _malloc_trim()
    if trim is None:
        return False
    trim(0)
    return True


def rss_bytes(pid: int | str = "self") -> int:
    """Resident set size of process `pid` (Linux: /proc/<pid>/status)."""
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    raise ValueError(f"no VmRSS in /proc/{pid}/status")


class HeapTrimmer:
    """A thread trimming the heap after `notify()`s (one per finished large request).

    Args:
      min_interval: seconds between two trims; under a steady stream of large requests the
        heap is trimmed at this rate, and once more after the stream ends.
    """

    def __init__(self, min_interval: float = 0.5):
        self.min_interval = min_interval
        self.trims = 0
        """How many times the heap was trimmed (for tests and curious operators)."""
        self._wanted = threading.Event()
        self._stopped = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self) -> HeapTrimmer:
        if _malloc_trim() is None:
            _log.info("no malloc_trim in this C library: freed memory stays with the process")
        elif self._thread is None:
            self._stopped.clear()
            self._thread = threading.Thread(target=self._run, name="rl-optimizer-trim",
                                            daemon=True)
            self._thread.start()
        return self

    def notify(self) -> None:
        """A large request finished: trim soon."""
        self._wanted.set()

    def stop(self) -> None:
        self._stopped.set()
        self._wanted.set()
        if self._thread is not None:
            self._thread.join()
            self._thread = None

    def _run(self) -> None:
        while True:
            self._wanted.wait()
            if self._stopped.is_set():
                return
            self._wanted.clear()  # notifications from here on ask for the next trim
            malloc_trim()
            self.trims += 1
            if self._stopped.wait(self.min_interval):
                return
