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
