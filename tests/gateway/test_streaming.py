"""200 MB each way through the gateway with memory staying flat: bodies stream, nothing is
buffered whole (the client, the gateway and the upstream all live in this process, so any
buffering anywhere would show)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

from aiohttp.test_utils import TestClient

from tests.admin_api.conftest import Admin
from tests.gateway.conftest import MiB, Upstream

SIZE = 200 * MiB
FLAT = 60 * MiB  # allowed growth: buffers and allocator slack, far below the body size


def rss() -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise RuntimeError("no VmRSS")


class PeakRss:
    """Samples this process's RSS while a transfer runs."""

    def __init__(self) -> None:
        self.baseline = rss()
        self.peak = self.baseline
        self._task: asyncio.Task[None] | None = None

    async def _sample(self) -> None:
        while True:
            self.peak = max(self.peak, rss())
            await asyncio.sleep(0.01)

    async def __aenter__(self) -> PeakRss:
        self._task = asyncio.create_task(self._sample())
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self._task is not None
        self._task.cancel()
        self.peak = max(self.peak, rss())

    @property
    def growth(self) -> int:
        return self.peak - self.baseline


async def test_200_mb_upload_and_download_stream(gateway: TestClient, upstream: Upstream,
                                                 admin: Admin, org: dict[str, Any]) -> None:
    key = await admin.key(org["id"], scopes=["svc:*"])
    headers = {"X-API-Key": key["key"]}

    async def body() -> AsyncIterator[bytes]:
        chunk = b"u" * MiB
        for _ in range(SIZE // MiB):
            yield chunk

    async with PeakRss() as upload:
        resp = await gateway.post("/svc/sink", data=body(), headers=headers)
        assert resp.status == 200
        assert (await resp.json())["received"] == SIZE
    assert upstream.seen[-1]["received"] == SIZE
    assert upload.growth < FLAT, f"upload grew RSS by {upload.growth / MiB:.0f} MiB"

    async with PeakRss() as download:
        resp = await gateway.get(f"/svc/big/{SIZE}", headers=headers)
        assert resp.status == 200 and resp.content_length == SIZE
        received = 0
        async for chunk in resp.content.iter_chunked(MiB):
            received += len(chunk)
        assert received == SIZE
    assert download.growth < FLAT, f"download grew RSS by {download.growth / MiB:.0f} MiB"
    print(f"\nRSS growth: upload {upload.growth / MiB:.1f} MiB, "
          f"download {download.growth / MiB:.1f} MiB for {SIZE // MiB} MiB each way")


async def test_chunked_upload_over_the_limit_is_413(gateway: TestClient, upstream: Upstream,
                                                    admin: Admin, org: dict[str, Any]) -> None:
    key = await admin.key(org["id"], scopes=["svc:*"])

    async def body() -> AsyncIterator[bytes]:
        chunk = b"u" * MiB
        for _ in range(301):
            yield chunk

    resp = await gateway.post("/svc/sink", data=body(), headers={"X-API-Key": key["key"]})
    assert resp.status == 413
    assert (await resp.json())["error"]["code"] == "payload_too_large"
