"""Ready-made actors built only on `runtime`'s public API (Daemon, Pool, ...)."""

__all__: list[str] = []
