"""Ready-made actors built only on `runtime`'s public API."""

from .daemon import Daemon
from .pool import ConsistentHash, Pool, PoolSize, Resize, Router, consistent_hash

__all__ = ["ConsistentHash", "Daemon", "Pool", "PoolSize", "Resize", "Router", "consistent_hash"]
