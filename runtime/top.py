"""``troupe top``: a live, refreshing view of one system's actors (rich), or of every
node's actors in a cluster (``troupe top --cluster``: rows carry their ``node``
and the table has a NODE column)."""

from __future__ import annotations

import io
import time
from collections.abc import Callable, Mapping, Sequence
from typing import TYPE_CHECKING, Any

from rich.console import Console, Group
from rich.live import Live
from rich.table import Table
from rich.text import Text

if TYPE_CHECKING:
    from .control import Client

SORTS = ("depth", "rate", "restarts", "path", "node")
"""The orders of `top`'s rows (``node``: by node, then path; without a cluster, as ``path``)."""


def flatten(node: dict[str, Any], on: str | None = None) -> list[dict[str, Any]]:
    """The actors of a snapshot's tree, parents first; with `on`, each a copy that
    carries ``"node": on``."""
    out = [node if on is None else {**node, "node": on}]
    for sub in node.get("children", ()):
        out.extend(flatten(sub, on))
    return out


def row_key(n: Mapping[str, Any]) -> str:
    """A row's identity across frames: its path, or ``troupe://NODE/PATH`` for a
    row that carries its node."""
    node = n.get("node")
    return n["path"] if node is None else f"troupe://{node}{n['path']}"


def rates(
    now: list[dict[str, Any]], before: dict[str, int] | None, seconds: float
) -> dict[str, float]:
    """Messages per second per actor (by `row_key`) since the previous frame."""
    if not before or seconds <= 0:
        return {}
    out = {}
    for n in now:
        key = row_key(n)
        out[key] = max(0, n["processed"] - before.get(key, n["processed"])) / seconds
    return out


def _counts(dead: Mapping[str, int]) -> str:
    return ", ".join(f"{k} {v}" for k, v in dead.items() if v) or "none"


def _loop_text(loop: Mapping[str, Any]) -> str:
    longest = loop.get("longest_step", 0) * 1000
    lag = loop.get("max_lag", 0) * 1000
    who = loop.get("longest_step_task") or "-"
    return (
        f"loop: longest step {longest:.1f} ms ({who}), max lag {lag:.1f} ms, "
        f"blocked {loop.get('blocked', 0)}"
    )


def _sorted(rows: list[dict[str, Any]], rate: Mapping[str, float], sort: str) -> None:
    def where(n: Mapping[str, Any]) -> tuple[str, str]:
        return (n.get("node") or "", n["path"])

    keys: dict[str, Callable[[dict[str, Any]], Any]] = {
        "depth": lambda n: (-n["mailbox_depth"], where(n)),
        "rate": lambda n: (-rate.get(row_key(n), 0.0), where(n)),
        "restarts": lambda n: (-n["restarts"], where(n)),
        "path": lambda n: (n["path"], n.get("node") or ""),
        "node": where,
    }
    rows.sort(key=keys[sort])


def frame(snapshot: dict[str, Any], rate: dict[str, float], sort: str = "depth") -> Group:
    """One screen of `top` from a snapshot dict (as the control socket sends it)."""
    nodes = flatten(snapshot["root"])
    _sorted(nodes, rate, sort)
    loop = snapshot.get("loop") or {}
    dead = snapshot.get("dead_letters", {})
    header = Text()
    header.append(f"{snapshot['system']}  ", style="bold")
    header.append(f"{len(nodes)} actors  ")
    header.append(_loop_text(loop) + "  ")
    header.append("dead letters: " + _counts(dead))
    return Group(header, _table(nodes, rate, with_node=False))


def cluster_frame(
    snapshots: Mapping[str, dict[str, Any]],
    rate: dict[str, float],
    sort: str = "depth",
    *,
    cluster: str = "",
    silent: Sequence[str] = (),
) -> Group:
    """One screen of `top --cluster`: every node's actors in one table with a NODE
    column, from ``{node: snapshot dict}``; `silent` names the nodes that are up
    but did not answer."""
    rows = [row for node, snap in snapshots.items() for row in flatten(snap["root"], node)]
    _sorted(rows, rate, sort)
    dead: dict[str, int] = {}
    for snap in snapshots.values():
        for reason, count in snap.get("dead_letters", {}).items():
            dead[reason] = dead.get(reason, 0) + count
    header = Text()
    header.append(f"cluster {cluster}  " if cluster else "cluster  ", style="bold")
    header.append(f"{len(snapshots)} nodes  {len(rows)} actors  ")
    header.append("dead letters: " + _counts(dead))
    lines: list[Text] = [header]
    for node in sorted(snapshots):
        lines.append(Text(f"{node}: " + _loop_text(snapshots[node].get("loop") or {})))
    for node in sorted(silent):
        lines.append(Text(f"{node}: did not answer", style="red"))
    return Group(*lines, _table(rows, rate, with_node=True))


def _table(rows: list[dict[str, Any]], rate: Mapping[str, float], *, with_node: bool) -> Table:
    table = Table(expand=True, pad_edge=False)
    columns = [("NODE", "left")] if with_node else []
    columns += [
        ("PATH", "left"),
        ("STATE", "left"),
        ("MAILBOX", "right"),
        ("MSG/S", "right"),
        ("PROCESSED", "right"),
        ("RESTARTS", "right"),
        ("DEAD", "right"),
        ("NOW", "left"),
        ("LAST ERROR", "left"),
    ]
    # node names are short and tell the rows apart: never squeezed to an ellipsis
    node_width = min(24, max((len(n["node"]) for n in rows), default=4)) if with_node else None
    for column, justify in columns:
        table.add_column(
            column,
            justify=justify,  # type: ignore[arg-type]
            no_wrap=column != "LAST ERROR",
            min_width=node_width if column == "NODE" else None,
        )
    for n in rows:
        state_style = {"running": "green", "restarting": "yellow", "failed": "red"}.get(
            n["state"], ""
        )
        now = ""
        if n.get("current"):
            now = f"{n['current']} {n['current_for']:.1f}s" + (" STUCK" if n.get("stuck") else "")
        error = n.get("last_error")
        cells = [n["node"]] if with_node else []
        table.add_row(
            *cells,
            n["path"],
            Text(n["state"], style=state_style),
            f"{n['mailbox_depth']}/{n['mailbox_capacity']}" if n["kind"] == "actor" else "",
            f"{rate.get(row_key(n), 0.0):.0f}" if n["kind"] == "actor" else "",
            str(n["processed"]) if n["kind"] == "actor" else "",
            str(n["restarts"]),
            str(n["dead_lettered"]),
            now,
            f"{error['type']}: {error['message']}" if error else "",
        )
    return table


def render_text(
    snapshot: dict[str, Any],
    rate: dict[str, float] | None = None,
    sort: str = "depth",
    width: int = 140,
) -> str:
    """One frame as plain text (what `troupe top --once` prints)."""
    return _text(frame(snapshot, rate or {}, sort), width)


def render_cluster_text(
    snapshots: Mapping[str, dict[str, Any]],
    rate: dict[str, float] | None = None,
    sort: str = "depth",
    width: int = 160,
    *,
    cluster: str = "",
    silent: Sequence[str] = (),
) -> str:
    """One cluster frame as plain text (what `troupe top --cluster --once` prints)."""
    return _text(cluster_frame(snapshots, rate or {}, sort, cluster=cluster, silent=silent), width)


def _text(group: Group, width: int) -> str:
    console = Console(width=width, record=True, file=io.StringIO(), color_system=None)
    console.print(group)
    return console.export_text()


def run_top(
    client: Client, *, sort: str = "depth", interval: float = 1.0, once: bool = False
) -> None:
    snapshot = client.call("tree")["snapshot"]
    if once:
        print(render_text(snapshot, sort=sort), end="")
        return
    before = {row_key(n): n["processed"] for n in flatten(snapshot["root"])}
    taken = time.monotonic()
    with Live(frame(snapshot, {}, sort), refresh_per_second=4, screen=False) as live:
        while True:
            time.sleep(interval)
            snapshot = client.call("tree")["snapshot"]
            now = time.monotonic()
            nodes = flatten(snapshot["root"])
            live.update(frame(snapshot, rates(nodes, before, now - taken), sort))
            before = {row_key(n): n["processed"] for n in nodes}
            taken = now


def run_cluster_top(
    fetch: Callable[[], tuple[dict[str, dict[str, Any]], list[str]]],
    *,
    cluster: str = "",
    sort: str = "depth",
    interval: float = 1.0,
    once: bool = False,
) -> None:
    """`top` across a cluster: `fetch()` returns ``({node: snapshot dict}, [nodes up
    that did not answer])`` (see `ClusterClient.snapshots`); called once per frame."""
    snapshots, silent = fetch()
    if once:
        print(render_cluster_text(snapshots, sort=sort, cluster=cluster, silent=silent), end="")
        return

    def counts(snaps: Mapping[str, dict[str, Any]]) -> tuple[list[dict[str, Any]], dict[str, int]]:
        rows = [row for node, snap in snaps.items() for row in flatten(snap["root"], node)]
        return rows, {row_key(n): n["processed"] for n in rows}

    _, before = counts(snapshots)
    taken = time.monotonic()
    first = cluster_frame(snapshots, {}, sort, cluster=cluster, silent=silent)
    with Live(first, refresh_per_second=4, screen=False) as live:
        while True:
            time.sleep(interval)
            snapshots, silent = fetch()
            now = time.monotonic()
            rows, after = counts(snapshots)
            rate = rates(rows, before, now - taken)
            live.update(cluster_frame(snapshots, rate, sort, cluster=cluster, silent=silent))
            before, taken = after, now
