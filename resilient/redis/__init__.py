"""State shared across replicas through Redis, failing open to local state.

Optional integration (the ``redis`` extra, redis-py's ``redis.asyncio``);
``resilient/__init__.py`` never imports it. Import from here::

    from resilient.redis import RedisBreakerStore, RedisRateStore, RedisRateLimiter, KeyedRedisRateLimiter

Every store updates its state atomically with one Lua script per decision
(one round trip), reads time from Redis ``TIME`` (replicas' clocks differ),
keeps its keys under ``prefix`` with expiries, and fails open: when Redis is
unreachable, slow or errors, it uses local in-memory state, logs one warning
on the ``resilient.redis`` logger, emits ``store_failed_open``, and switches
back by itself (``store_recovered``) when a probe, sent at most once per
``recovery_interval``, gets an answer. When Redis answers but refuses (a
password, an ACL, a read-only replica: a configuration error) the warning is
repeated once a minute while it lasts, and ``status()`` shows the error.

Redis Cluster: pass a ``redis+cluster://host:port[,host:port...]`` URL or a
``redis.cluster.RedisCluster`` / ``redis.asyncio.cluster.RedisCluster``;
every script's keys share one hash slot.
"""

from __future__ import annotations

from resilient.extras import require_extra

# The extra's packages first: without them, the error names the extra to install.
require_extra("resilient.redis", "redis", "redis")

from resilient.redis._common import logger
from resilient.redis.breaker import BREAKER_SCRIPT, RedisBreakerStore
from resilient.redis.cache import JSONSerializer, RedisCacheStore, Serializer
from resilient.redis.ratelimit import (
    GCRA_SCRIPT,
    KeyedRedisRateLimiter,
    RateDecision,
    RedisRateLimiter,
    RedisRateStore,
)

__all__ = [
    "BREAKER_SCRIPT",
    "GCRA_SCRIPT",
    "JSONSerializer",
    "KeyedRedisRateLimiter",
    "RateDecision",
    "RedisBreakerStore",
    "RedisCacheStore",
    "RedisRateLimiter",
    "RedisRateStore",
    "Serializer",
    "logger",
]
