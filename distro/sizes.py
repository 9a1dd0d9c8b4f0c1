"""Human sizes ("500M", "50GiB") as node quotas and inventory bandwidths are written."""

from __future__ import annotations

import re

_SIZE_RE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([KMGT]i?B?|B)?\s*$", re.IGNORECASE)


class SizeError(ValueError):
    """A size that cannot be parsed; the message names the key it came from."""


def parse_size(text: str | int | None, key: str = "quota") -> int | None:
    """Parse "50G", "512MiB", "1000000" into bytes (binary units); empty means no limit."""
    if text is None or text == "":
        return None
    if isinstance(text, int):
        return text
    m = _SIZE_RE.match(text)
    if not m:
        raise SizeError(f"{key}: cannot parse size {text!r} (examples: 500M, 50G, 1048576)")
    number = float(m.group(1))
    unit = (m.group(2) or "B").upper().rstrip("B").rstrip("I")
    factor = {"": 1, "K": 1 << 10, "M": 1 << 20, "G": 1 << 30, "T": 1 << 40}[unit]
    return int(number * factor)


_UNITS = ("kB", "MB", "GB", "TB", "PB")


def format_size(n: float) -> str:
    """Bytes as a person reads them: `512 B`, `4.0 kB`, `1.5 MB` (SI units, one decimal), so a
    small file never shows as `0.0 MB` and a big one never as a wall of digits."""
    if n < 0:
        return f"-{format_size(-n)}"
    if n < 1000:
        return f"{int(n)} B"
    value = float(n)
    for unit in _UNITS:
        value /= 1000.0
        if value < 999.95 or unit == _UNITS[-1]:
            return f"{value:.1f} {unit}"
    raise AssertionError("unreachable")


def format_rate(bytes_per_second: float) -> str:
    """A transfer rate: `format_size` per second (`2.5 MB/s`)."""
    return f"{format_size(bytes_per_second)}/s"


def format_duration(seconds: float | None) -> str:
    """An ETA or an age: `45s`, `12m 05s`, `3h 20m`, `2d 4h`; `-` when unknown."""
    if seconds is None or seconds != seconds or seconds < 0:
        return "-"
    s = int(round(seconds))
    if s < 60:
        return f"{s}s"
    if s < 3600:
        return f"{s // 60}m {s % 60:02d}s"
    if s < 86400:
        return f"{s // 3600}h {s % 3600 // 60:02d}m"
    return f"{s // 86400}d {s % 86400 // 3600}h"
