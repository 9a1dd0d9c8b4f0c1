"""A stand-alone delta origin for the benchmark: DeltaService + delta routes over given files.

    python -m benchmarks.delta_origin --root DIR --port N FILE...

The files are served in place (as the origin's own repository files would be); signatures and
patches go to a BlobStore under DIR.
"""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

from aiohttp import web

from cache_node.delta_routes import add_delta_routes
from cache_node.delta_service import DeltaService
from cache_node.responses import error_middleware
from cache_node.store import BlobStore
from distro.digests import file_sha256


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--root", type=Path, required=True)
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("files", type=Path, nargs="+")
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    files: dict[str, Path] = {file_sha256(f): f for f in args.files}
    store = BlobStore(args.root / "store")
    store.open()

    def locate(sha: str) -> Path | None:
        if sha in files:
            return files[sha]
        return store.blob_path(sha) if store.has(sha) else None

    service = DeltaService(store, locate, args.root / "work")
    app = web.Application(middlewares=[error_middleware()])
    add_delta_routes(app, lambda request: service)
    web.run_app(app, host="127.0.0.1", port=args.port, print=None, access_log=None)


if __name__ == "__main__":
    main()
