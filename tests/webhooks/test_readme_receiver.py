"""The README's receiver, run as written (standard library only), gets Keystile's events and
refuses a forged one."""

from __future__ import annotations

import asyncio
import os
import re
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from admin_api.webhooks import signing
from keystile.embedded import free_port
from tests.admin_api.conftest import Admin
from tests.gateway.conftest import eventually
from tests.webhooks.conftest import subscribe

README = Path(__file__).parents[2] / "README.md"


def _receiver_source() -> str:
    blocks = re.findall(r"```python\n(.*?)```", README.read_text("utf-8"), re.S)
    found = [b for b in blocks if b.startswith("# receiver.py")]
    assert len(found) == 1, "the README's receiver.py block"
    return found[0]


@pytest.fixture
def readme_receiver(tmp_path: Path) -> Any:
    procs: list[subprocess.Popen[str]] = []

    def start(secret: str, port: int) -> subprocess.Popen[str]:
        script = tmp_path / "receiver.py"
        script.write_text(_receiver_source())
        proc = subprocess.Popen([sys.executable, str(script)], stdout=subprocess.PIPE,
                                stderr=subprocess.DEVNULL, text=True,
                                env={**os.environ, "KEYSTILE_WEBHOOK_SECRET": secret,
                                     "PORT": str(port)})
        procs.append(proc)
        return proc

    yield start
    for proc in procs:
        proc.kill()
        proc.wait()


async def _listening(port: int) -> None:
    for _ in range(200):
        try:
            _, writer = await asyncio.open_connection("127.0.0.1", port)
        except OSError:
            await asyncio.sleep(0.02)
            continue
        writer.close()
        return
    raise AssertionError("the receiver never listened")


async def test_the_readme_receiver_verifies_real_deliveries(
        admin: Admin, org: dict[str, Any], readme_receiver: Any) -> None:
    port = free_port()
    endpoint = await subscribe(admin, org["id"], f"http://127.0.0.1:{port}/hooks")
    secret = endpoint["secret"]
    proc = readme_receiver(secret, port)
    await _listening(port)
    # A forged delivery (signed with another secret) and a stale one are refused.
    body = b'{"type": "key.revoked"}'
    async with aiohttp.ClientSession() as session:
        for header in (signing.header([signing.new_secret()], int(time.time()), body),
                       signing.header([secret], int(time.time()) - 3600, body),
                       "t=1,v1=00"):
            async with session.post(f"http://127.0.0.1:{port}/hooks", data=body,
                                    headers={signing.HEADER: header}) as resp:
                assert resp.status == 400
    key = await admin.key(org["id"], name="readme")
    assert proc.stdout is not None
    line = await asyncio.wait_for(asyncio.to_thread(proc.stdout.readline), 10)
    assert line.startswith(f"key.created {key['id']} ")

    async def delivered() -> bool:
        return await admin.db.fetchval("SELECT state FROM webhook_deliveries") == "delivered"
    await eventually(delivered)
