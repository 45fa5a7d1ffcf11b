"""Peak resident memory of a block of code, exactly, on Linux.

The kernel keeps a high-water mark of each process's resident set
(``VmHWM`` in ``/proc/self/status``); writing ``5`` to
``/proc/self/clear_refs`` resets it. :class:`PeakRSS` resets it on entry and
reads it on exit: no sampling, nothing missed. Where that is not possible
(not Linux, or ``clear_refs`` not writable) the figures are None and
``method`` says so.
"""

from __future__ import annotations

import gc
import os
from typing import Any

import torch


def _status_bytes(field_name: str) -> int | None:
    try:
        with open("/proc/self/status") as status:
            for line in status:
                if line.startswith(field_name + ":"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError):
        return None
    return None


def current_rss() -> int | None:
    """Resident bytes of this process now; None without ``/proc``."""
    try:
        with open("/proc/self/statm") as statm:
            return int(statm.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError):
        return None


def reset_peak_rss() -> bool:
    """Reset the kernel's peak RSS of this process; True if it could."""
    try:
        with open("/proc/self/clear_refs", "w") as clear_refs:
            clear_refs.write("5")
    except OSError:
        return False
    return _status_bytes("VmHWM") is not None


class PeakRSS:
    """Peak resident set size of this process while a block runs.

    ``result`` holds ``rss_before_bytes``, ``rss_peak_bytes``,
    ``rss_added_bytes`` (peak minus before) and ``method``; with a CUDA
    ``device``, also the allocator's bytes before and at its peak.

    Parameters
    ----------
    device : torch.device, default=None
        The device whose allocator peak is read as well, when it is CUDA.
    """

    METHOD = "VmHWM reset via /proc/self/clear_refs"

    def __init__(self, device: torch.device | None = None) -> None:
        self.device = device
        self.result: dict[str, Any] = {}

    def __enter__(self) -> PeakRSS:
        gc.collect()
        self.before = current_rss()
        self.exact = self.before is not None and reset_peak_rss()
        if self.device is not None and self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            torch.cuda.reset_peak_memory_stats(self.device)
            self._cuda_before = torch.cuda.memory_allocated(self.device)
        return self

    def __exit__(self, *exc_info: object) -> None:
        if self.exact:
            peak = _status_bytes("VmHWM") or 0
            self.result = {
                "rss_before_bytes": self.before,
                "rss_peak_bytes": peak,
                "rss_added_bytes": peak - self.before,
                "method": self.METHOD,
            }
        else:
            self.result = {
                "rss_before_bytes": None,
                "rss_peak_bytes": None,
                "rss_added_bytes": None,
                "method": "unavailable (needs Linux's /proc/self/clear_refs)",
            }
        if self.device is not None and self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            self.result["cuda_allocated_before_bytes"] = self._cuda_before
            self.result["cuda_peak_allocated_bytes"] = torch.cuda.max_memory_allocated(
                self.device
            )
