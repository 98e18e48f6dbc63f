"""The hot path's multiplexed Redis connection (gateway/redispipe.py), against the real Redis:
many pipelines in flight at once each get their own answers, refused commands give their
error in place, and a pipeline whose bytes were sent is never sent again — it fails when the
connection is lost or Redis answers too late, and the next pipeline gets a new connection."""

from __future__ import annotations

import asyncio
import contextlib
import os
import socket
from collections.abc import AsyncIterator

import pytest
from redis.asyncio import Redis
from redis.exceptions import ConnectionError, NoScriptError, ResponseError, TimeoutError

from gateway.redisclient import NotSent, create_redis
from gateway.redispipe import RedisPipe, pack
from gateway.settings import StoreSettings
from tests.conftest import Stores
from tests.gateway.conftest import eventually


def test_commands_are_packed_as_resp_arrays_of_bulk_strings() -> None:
    assert pack([("SET", "k", 12), ("GET", b"\r\n")]) == (
        b"*3\r\n$3\r\nSET\r\n$1\r\nk\r\n$2\r\n12\r\n"
        b"*2\r\n$3\r\nGET\r\n$2\r\n\r\n\r\n")


@contextlib.asynccontextmanager
async def _opened(url: str, timeout_s: float = 5.0) -> AsyncIterator[tuple[RedisPipe, Redis]]:
    """A pipe on ``url``, and a plain client beside it (to watch and disturb Redis)."""
    redis = create_redis(url, StoreSettings(timeout_s=timeout_s))
    assert isinstance(redis, Redis)
    pipe = RedisPipe(redis.connection_pool, timeout_s)
    try:
        yield pipe, redis
    finally:
        await pipe.aclose()
        await redis.aclose()


async def test_concurrent_pipelines_each_get_their_own_answers(stores: Stores) -> None:
    async with _opened(stores.redis_url) as (pipe, _):
        base = f"pipe-{os.urandom(4).hex()}"

        async def one(i: int) -> list[object]:
            return await pipe.execute([("SET", f"{base}:{i}", i), ("INCRBY", f"{base}:{i}", i),
                                       ("GET", f"{base}:{i}")])

        answers = await asyncio.gather(*(one(i) for i in range(200)))
        assert answers == [[b"OK", 2 * i, str(2 * i).encode()] for i in range(200)]


async def test_a_refused_command_gives_its_error_in_place(stores: Stores) -> None:
    async with _opened(stores.redis_url) as (pipe, _):
        got = await pipe.execute([("PING",), ("EVALSHA", "0" * 40, 0), ("INCR", "a", "b"),
                                  ("ECHO", "still here")])
        assert got[0] == b"PONG"
        assert isinstance(got[1], NoScriptError)  # what the runner reloads the script for
        assert isinstance(got[2], ResponseError) and "wrong number" in str(got[2])
        assert got[3] == b"still here"


async def test_a_lost_connection_fails_what_was_sent_and_the_next_gets_a_new_one(
        stores: Stores) -> None:
    async with _opened(stores.redis_url) as (pipe, redis):
        [first_id] = await pipe.execute([("CLIENT", "ID")])
        blocked = asyncio.ensure_future(pipe.execute([("BLPOP", f"never-{first_id}", 30)]))

        async def blocked_on_server() -> bool:
            clients = (await redis.execute_command("CLIENT", "LIST")).decode()
            return f"id={first_id} " in clients and "cmd=blpop" in clients

        await eventually(blocked_on_server)
        await redis.execute_command("CLIENT", "KILL", "ID", first_id)
        with pytest.raises(ConnectionError):  # sent, so never sent again: it may have run
            await blocked
        [second_id] = await pipe.execute([("CLIENT", "ID")])
        assert second_id != first_id


async def test_an_answer_later_than_the_timeout_fails_and_drops_the_connection(
        stores: Stores) -> None:
    async with _opened(stores.redis_url, timeout_s=0.3) as (pipe, _):
        [first_id] = await pipe.execute([("CLIENT", "ID")])
        with pytest.raises(TimeoutError):
            await pipe.execute([("BLPOP", f"never-{first_id}", 5)])
        [second_id] = await pipe.execute([("CLIENT", "ID")])
        assert second_id != first_id


async def test_no_connection_means_not_sent() -> None:
    with socket.socket() as sock:  # a port nobody listens on
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    async with _opened(f"redis://127.0.0.1:{port}/0", timeout_s=0.5) as (pipe, _):
        with pytest.raises(NotSent):
            await pipe.execute([("PING",)])


async def test_a_command_that_cannot_be_packed_leaves_the_order_of_answers_intact(
        stores: Stores) -> None:
    async with _opened(stores.redis_url) as (pipe, _):
        assert await pipe.execute([("ECHO", "first")]) == [b"first"]
        with pytest.raises(UnicodeEncodeError):
            await pipe.execute([("ECHO", "\ud800")])  # a lone surrogate: not UTF-8
        # The next pipeline gets its own answer, not one owed to the pipeline never sent.
        assert await asyncio.wait_for(pipe.execute([("ECHO", "next")]), 2) == [b"next"]
