"""What the answer layer learnt while answering one request, for the access log.

The cores say how an answer came about with fields on the answer types (`StreamAnswer.coalesced`,
`BlobAnswer.delta`, `stale`); `responses.send_answer` turns that into a cache status here, next
to the body bytes it really sent (sendfile included), so the access log can report both without
parsing headers. Requests that never reach `send_answer` (JSON, errors) keep the defaults.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from aiohttp import web

CacheStatus = Literal["hit", "miss", "coalesced", "stale", "delta", "-"]


@dataclass
class RequestNote:
    cache: CacheStatus = "-"
    sent: int | None = None  # body bytes sent by send_answer; None: it did not answer


NOTE_KEY: web.RequestKey[RequestNote] = web.RequestKey("edgedepot_note", RequestNote)


def note_of(request: web.Request) -> RequestNote:
    """The request's note, created on first use (the access log creates it up front)."""
    note = request.get(NOTE_KEY)
    if note is None:
        note = RequestNote()
        request[NOTE_KEY] = note
    return note
