"""The live web dashboard: ``troupe web`` and ``open_system(..., dashboard_port=)``.

A page on 127.0.0.1 (plain HTML, JS and SVG shipped in this package: no CDN,
no build step) showing a system's tree, rates, mailboxes, restarts, dead
letters, loop health, bus events and one actor's detail, updated live over
server-sent events.  Read-only.  See `Dashboard` and the sources it reads
(`LocalSource`, `ControlSource`, `ClusterSource`).
"""

from __future__ import annotations

from .server import DEFAULT_PORT, Dashboard
from .sources import ClusterSource, ControlSource, LocalSource, Source

__all__ = ["DEFAULT_PORT", "ClusterSource", "ControlSource", "Dashboard", "LocalSource", "Source"]
