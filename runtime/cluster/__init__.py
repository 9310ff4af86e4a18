"""Troupe's cluster: nodes on NATS with location-transparent refs.

Imported only by a system started with ``cluster=`` (the ``cluster`` extra:
nats-py and msgspec); a system without it never imports this package.
"""
