"""Running the limits script: many plans in ONE pipelined round trip, spends a worker starts
in the same turn of its event loop batched together, scripts Redis forgot loaded again, and
Redis's clock learnt from every answer (``gateway/redisclock.py``)."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from typing import Any

from redis.asyncio import Redis
from redis.exceptions import NoScriptError

from gateway.limits.plan import Plan
from gateway.limits.script import LATE, LIMITS, NEED_SEED
from gateway.redisclient import UNRUN, Store, at_most_once
from gateway.redisclock import RedisClock
from gateway.redispipe import RedisPipe

log = logging.getLogger(__name__)

PIPE_TIMEOUT_S = 5.0  # when the client was made without a socket timeout
# Giving up the multiplexed connection fails every spend in flight on it, so it waits longer
# than a request does (the store timeout): a request in a stall is answered 503 at its own
# deadline, never judged per worker because another request's spend timed out first.
PIPE_PATIENCE = 2.0
# On a cluster, what a failover refused without running it is sent at most this often in all.
UNRUN_TRIES = 3
Late = Callable[[Plan, Any], Awaitable[None]]


class ScriptRunner:
    def __init__(self, redis: Store, late: Late) -> None:
        self.redis = redis
        self.script = redis.register_script(LIMITS)
        self.clock = RedisClock()
        self._late = late  # gives back what a request that stopped waiting was charged
        self._waiting: list[tuple[Plan, asyncio.Future[list[Any]]]] = []
        self._sending: set[asyncio.Task[None]] = set()
        # One node: requests' spends go on the worker's multiplexed connection, and fast
        # mode's syncs (hundreds of scripts a round trip) on a second one, so no request waits
        # behind a sync, nor fails with it. A cluster routes each script by its keys' slot,
        # which redis-py's cluster pipeline does.
        self.pipe = self.background = None
        if isinstance(redis, Redis):
            patience = PIPE_PATIENCE * float(
                redis.connection_pool.connection_kwargs.get("socket_timeout") or PIPE_TIMEOUT_S)
            self.pipe = RedisPipe(redis.connection_pool, patience)
            self.background = RedisPipe(redis.connection_pool, patience)

    async def call(self, keys: list[str], args: list[str | bytes]) -> Any:
        """The script once, on its own (it is loaded again if Redis forgot it)."""
        sent = time.time()
        with at_most_once():
            result = await self.script(keys=keys, args=args)
        self._observe(result, sent)
        return result

    def together(self, plan: Plan) -> asyncio.Future[list[Any]]:
        """The plan's answer; every plan started in this turn of the loop shares one round
        trip, sent at the next turn."""
        loop = asyncio.get_running_loop()
        future: asyncio.Future[list[Any]] = loop.create_future()
        self._waiting.append((plan, future))
        if len(self._waiting) == 1:
            loop.call_soon(self._send_waiting)
        return future

    def _send_waiting(self) -> None:
        batch, self._waiting = self._waiting, []
        task = asyncio.ensure_future(self._answer(batch))
        self._sending.add(task)  # keeps the task alive until it is done
        task.add_done_callback(self._sending.discard)

    async def _answer(self, batch: list[tuple[Plan, asyncio.Future[list[Any]]]]) -> None:
        # A request that gave up waiting (its deadline passed: it got a 503) spends nothing.
        batch = [(plan, future) for plan, future in batch if not future.done()]
        if not batch:
            return
        try:
            results = await self.run([plan for plan, _ in batch])
        except BaseException as exc:  # the connection failed: every waiting spend learns it
            for _, future in batch:
                if not future.done():
                    if isinstance(exc, Exception):
                        future.set_exception(exc)
                    else:
                        future.cancel()
            if not isinstance(exc, Exception):
                raise
            return
        late: list[tuple[Plan, Any]] = []
        for (plan, future), result in zip(batch, results, strict=True):
            if future.done():  # the request gave up (503) while its script ran: give back
                late.append((plan, result))
            elif isinstance(result, Exception):
                future.set_exception(result)
            else:
                future.set_result(result)
        # Only once every waiting request has its answer: none waits for another's refund.
        await asyncio.gather(*(self._late(plan, result) for plan, result in late
                               if not isinstance(result, Exception)
                               and int(result[0]) not in (NEED_SEED, LATE)))

    async def run(self, plans: list[Plan], background: bool = False) -> list[Any]:
        """The script for every plan, in one pipeline: a result (or the error) each.
        ``background``: for work no request waits on (fast mode's syncs)."""
        # On a cluster, after a master failed over, what never reached it goes again, to the
        # new master: the failure has marked the slot map for reading again. Up to
        # UNRUN_TRIES in all, since a try can still meet the old map while another batch is
        # re-reading it. (The pipe of a single node has already retried what it could not
        # send.)
        for tries in range(1, UNRUN_TRIES + 1):
            try:
                results = await self._pipelined(plans, background)
                break
            except UNRUN:
                # Raised for the whole pipeline: it sent nothing only if all of it went to
                # one node — one slot, as the plans of one organisation are.
                if self.pipe is not None or not self._one_slot(plans) or tries == UNRUN_TRIES:
                    raise
        for _ in range(tries, UNRUN_TRIES):
            unrun = [i for i, result in enumerate(results) if isinstance(result, UNRUN)]
            if not unrun or self.pipe is not None:
                break
            await self._again(plans, results, unrun, background)
        unknown = [i for i, result in enumerate(results) if isinstance(result, NoScriptError)]
        if unknown:  # Redis restarted, failed over or flushed its scripts: none of these ran
            await self.redis.script_load(LIMITS)
            await self._again(plans, results, unknown, background)
        return results

    def _one_slot(self, plans: list[Plan]) -> bool:
        keyslot = getattr(self.redis, "keyslot", None)
        return keyslot is not None and len({keyslot(plan.keys[0]) for plan in plans}) == 1

    async def _again(self, plans: list[Plan], results: list[Any], which: list[int],
                     background: bool) -> None:
        """Runs ``plans[i]`` for each ``i`` in ``which`` once more, in place in ``results``."""
        again = await self._pipelined([plans[i] for i in which], background)
        for i, result in zip(which, again, strict=True):
            results[i] = result

    async def _pipelined(self, plans: list[Plan], background: bool = False) -> list[Any]:
        sent = time.time()
        multiplexed = self.background if background else self.pipe
        if multiplexed is not None:
            results = await multiplexed.execute([
                ("EVALSHA", self.script.sha, len(plan.keys), *plan.keys, *plan.args)
                for plan in plans])
        else:
            with at_most_once():
                async with self.redis.pipeline(transaction=False) as pipe:
                    for plan in plans:
                        pipe.evalsha(self.script.sha, len(plan.keys), *plan.keys, *plan.args)
                    results = list(await pipe.execute(raise_on_error=False))
        received = time.time()
        for result in results:
            self._observe(result, sent, received)
        return results

    def _observe(self, result: Any, sent: float, received: float | None = None) -> None:
        """A script's answer ends with its ``TIME``: what it tells of Redis's clock."""
        if isinstance(result, list) and len(result) >= 2 and int(result[0]) != NEED_SEED:
            self.clock.observe(int(result[-1]), sent,
                               time.time() if received is None else received)

    async def aclose(self) -> None:
        for pipe in (self.pipe, self.background):
            if pipe is not None:
                await pipe.aclose()

    async def learn_clock(self) -> None:
        """Reads Redis's clock once, so the first spends of a fresh worker carry a deadline
        too (each spend's answer refines it afterwards)."""
        sent = time.time()
        seconds, micros = await self.redis.time()
        self.clock.observe(int(seconds) * 1000 + int(micros) // 1000, sent, time.time())
