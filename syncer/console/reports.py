"""Sites that ran their bootstrap script and reported to the console.

A report carries the site's name, host name, the front door it now uses and its addresses;
the console adds the address the report came from. Reports are kept in a JSON file (when the
console has a state directory) so a restarted console still knows which sites onboarded.
Names the inventory does not know are kept too: they are the new sites to add.
"""

from __future__ import annotations

import ipaddress
import json
import logging
import os
import re
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)

MAX_REPORTS = 10_000
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")


class ReportError(ValueError):
    """A report that cannot be accepted; the message says why."""


@dataclass(frozen=True)
class SiteReport:
    site: str
    hostname: str
    front: str
    addresses: tuple[str, ...]  # what the site said, plus the address it reported from
    reported_at: float  # Unix time
    count: int = 1  # how many times it reported

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


def parse_report(site: str, doc: Any, remote: str | None) -> SiteReport:
    """Validate a report body (`remote`: the address it came from)."""
    if not _NAME.match(site):
        raise ReportError("site: letters, digits and . _ - (at most 128)")
    if not isinstance(doc, dict):
        raise ReportError("a report is a JSON object")
    addresses: list[str] = []
    raw = doc.get("addresses", [])
    if not isinstance(raw, list):
        raise ReportError("addresses: a list")
    for item in [*raw[:32], remote]:
        try:
            addr = str(ipaddress.ip_address(str(item)))
        except ValueError:
            continue
        if addr not in addresses:
            addresses.append(addr)
    hostname = str(doc.get("hostname", ""))[:128]
    front = str(doc.get("front", ""))[:512]
    return SiteReport(site, hostname, front, tuple(addresses), time.time())


class SiteReports:
    """Every site's latest report, optionally persisted in `path`."""

    def __init__(self, path: Path | None = None) -> None:
        self.path = path
        self.reports: dict[str, SiteReport] = {}
        if path is not None and path.exists():
            try:
                for doc in json.loads(path.read_text()):
                    doc["addresses"] = tuple(doc["addresses"])
                    report = SiteReport(**doc)
                    self.reports[report.site] = report
            except (OSError, ValueError, TypeError, KeyError) as exc:
                log.warning("site reports %s unreadable, starting empty: %s", path, exc)

    def add(self, report: SiteReport) -> SiteReport:
        old = self.reports.get(report.site)
        if old is None and len(self.reports) >= MAX_REPORTS:
            raise ReportError("too many sites reported")
        if old is not None:
            report = SiteReport(report.site, report.hostname, report.front, report.addresses,
                                report.reported_at, old.count + 1)
        self.reports[report.site] = report
        self._save()
        return report

    def _save(self) -> None:
        if self.path is None:
            return
        tmp = self.path.with_suffix(".tmp")
        tmp.write_text(json.dumps([r.to_json() for r in self.reports.values()]))
        os.replace(tmp, self.path)
