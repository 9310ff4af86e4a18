"""``troupe top``: a live, refreshing view of one system's actors (rich)."""

from __future__ import annotations

import io
import time
from typing import TYPE_CHECKING, Any

from rich.console import Console, Group
from rich.live import Live
from rich.table import Table
from rich.text import Text

if TYPE_CHECKING:
    from .control import Client

SORTS = ("depth", "rate", "restarts", "path")


def flatten(node: dict[str, Any]) -> list[dict[str, Any]]:
    out = [node]
    for sub in node.get("children", ()):
        out.extend(flatten(sub))
    return out


def rates(
    now: list[dict[str, Any]], before: dict[str, int] | None, seconds: float
) -> dict[str, float]:
    """Messages per second per actor since the previous frame."""
    if not before or seconds <= 0:
        return {}
    return {
        n["path"]: max(0, n["processed"] - before.get(n["path"], n["processed"])) / seconds
        for n in now
    }


def frame(snapshot: dict[str, Any], rate: dict[str, float], sort: str = "depth") -> Group:
    """One screen of `top` from a snapshot dict (as the control socket sends it)."""
    nodes = flatten(snapshot["root"])
    keys = {
        "depth": lambda n: (-n["mailbox_depth"], n["path"]),
        "rate": lambda n: (-rate.get(n["path"], 0.0), n["path"]),
        "restarts": lambda n: (-n["restarts"], n["path"]),
        "path": lambda n: n["path"],
    }
    nodes.sort(key=keys[sort])
    loop = snapshot.get("loop") or {}
    dead = snapshot.get("dead_letters", {})
    header = Text()
    header.append(f"{snapshot['system']}  ", style="bold")
    header.append(f"{len(nodes)} actors  ")
    longest = loop.get("longest_step", 0) * 1000
    lag = loop.get("max_lag", 0) * 1000
    who = loop.get("longest_step_task") or "-"
    header.append(
        f"loop: longest step {longest:.1f} ms ({who}), max lag {lag:.1f} ms, "
        f"blocked {loop.get('blocked', 0)}  "
    )
    header.append(
        "dead letters: " + (", ".join(f"{k} {v}" for k, v in dead.items() if v) or "none")
    )
    table = Table(expand=True, pad_edge=False)
    for column, justify in (
        ("PATH", "left"),
        ("STATE", "left"),
        ("MAILBOX", "right"),
        ("MSG/S", "right"),
        ("PROCESSED", "right"),
        ("RESTARTS", "right"),
        ("DEAD", "right"),
        ("NOW", "left"),
        ("LAST ERROR", "left"),
    ):
        table.add_column(column, justify=justify, no_wrap=column != "LAST ERROR")  # type: ignore[arg-type]
    for n in nodes:
        state_style = {"running": "green", "restarting": "yellow", "failed": "red"}.get(
            n["state"], ""
        )
        now = ""
        if n.get("current"):
            now = f"{n['current']} {n['current_for']:.1f}s" + (" STUCK" if n.get("stuck") else "")
        error = n.get("last_error")
        table.add_row(
            n["path"],
            Text(n["state"], style=state_style),
            f"{n['mailbox_depth']}/{n['mailbox_capacity']}" if n["kind"] == "actor" else "",
            f"{rate.get(n['path'], 0.0):.0f}" if n["kind"] == "actor" else "",
            str(n["processed"]) if n["kind"] == "actor" else "",
            str(n["restarts"]),
            str(n["dead_lettered"]),
            now,
            f"{error['type']}: {error['message']}" if error else "",
        )
    return Group(header, table)


def render_text(
    snapshot: dict[str, Any],
    rate: dict[str, float] | None = None,
    sort: str = "depth",
    width: int = 140,
) -> str:
    """One frame as plain text (what `troupe top --once` prints)."""
    console = Console(width=width, record=True, file=io.StringIO(), color_system=None)
    console.print(frame(snapshot, rate or {}, sort))
    return console.export_text()


def run_top(
    client: Client, *, sort: str = "depth", interval: float = 1.0, once: bool = False
) -> None:
    snapshot = client.call("tree")["snapshot"]
    if once:
        print(render_text(snapshot, sort=sort), end="")
        return
    before = {n["path"]: n["processed"] for n in flatten(snapshot["root"])}
    taken = time.monotonic()
    with Live(frame(snapshot, {}, sort), refresh_per_second=4, screen=False) as live:
        while True:
            time.sleep(interval)
            snapshot = client.call("tree")["snapshot"]
            now = time.monotonic()
            nodes = flatten(snapshot["root"])
            live.update(frame(snapshot, rates(nodes, before, now - taken), sort))
            before = {n["path"]: n["processed"] for n in nodes}
            taken = now
