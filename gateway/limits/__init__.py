"""The limits engine: rate limits, quotas and lifetime usage, in Redis.

- ``script``: the Lua script and the packed, bounded state it keeps per subject;
- ``plan``: a request's limits as the script sees them, and its answer as a ``decision``;
- ``runner``: pipelining, batching and re-loading of the script;
- ``exact``: every request judged by Redis (``limits_mode = "exact"``);
- ``fast``: most requests judged by the worker, synced in batches (``"fast"``);
- ``lessons``: what Redis's answers taught a ``fast`` worker (limits near or past their end);
- ``local``: the per-worker fallback while Redis is unreachable;
- ``seeds``: counts Redis lost, from PostgreSQL; ``periods``: quota periods;
- ``headers``: what a client is told of its limits."""
