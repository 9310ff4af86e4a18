"""``troupe top``: a live, indented tree of one system's actors (the shape of
``troupe tree``), or of every node's in a cluster (``troupe top --cluster``: a
NODE column, one tree per node).

The columns are chosen to fit the terminal: the tree and each actor's state are
always shown whole; the other columns come in order of importance while they
fit (mailbox, msg/s, restarts, last error, message in hand, processed, dead
letters).  On a terminal, keys sort the siblings (``s`` or ``1``-``5``), hide
``/system`` (``h``), select an actor (arrows or ``j``/``k``) whose details show
in a pane below the tree (``d`` hides it), and quit (``q``).  The frames are
built as plain lines of styled segments (`Line`), so that one function renders
them for a test, a pipe and a terminal alike.
"""

from __future__ import annotations

import contextlib
import os
import select
import shutil
import signal
import sys
import time
from collections import deque
from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import TYPE_CHECKING, Any, TextIO

import attrs
from rich.cells import cell_len, set_cell_size

if TYPE_CHECKING:
    from .control import Client

SORTS = ("depth", "rate", "restarts", "path", "node")
"""The orders of `top`'s siblings (``node``: the nodes by name, then each tree by
name; without a cluster, as ``path``)."""

Segment = tuple[str, str]  # (text, style): style is "" or a key of `STYLES`
Line = list[Segment]

STYLES = {
    "bold": "1",
    "dim": "2",
    "green": "32",
    "yellow": "33",
    "red": "31",
    "red bold": "1;31",
    "cyan": "36",
    "reverse": "7",
}
STATE_STYLES = {
    "running": "green",
    "starting": "yellow",
    "restarting": "yellow",
    "stopping": "yellow",
    "stopped": "dim",
    "failed": "red bold",
}
SEPARATOR = "  "
ELLIPSIS = "…"


# -- samples and rates ------------------------------------------------------------------


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


def _all_rows(snapshots: Mapping[str | None, dict[str, Any]]) -> list[dict[str, Any]]:
    return [row for node, snap in snapshots.items() for row in flatten(snap["root"], node)]


# -- the tree's rows ----------------------------------------------------------------------


@attrs.frozen
class Row:
    """One line of the tree: an actor (its snapshot dict) and the branches before it."""

    info: dict[str, Any]
    prefix: str  # "│  ├─ " and the like: `troupe tree`'s drawing
    key: str  # `row_key`
    node: str | None = None  # the cluster node it runs on

    @property
    def label(self) -> str:
        return self.prefix + str(self.info["name"])


def _aggregate(info: Mapping[str, Any], rate: Mapping[str, float], on: str | None) -> Any:
    """What a subtree weighs for each sort: its deepest mailbox, its total rate,
    its total restarts (a busy branch sorts first, wherever the busy actor is)."""
    depth, msgs, restarts = 0, 0.0, 0
    for n in flatten(dict(info), on):
        depth = max(depth, n.get("mailbox_depth", 0) if n.get("kind") == "actor" else 0)
        msgs += rate.get(row_key(n), 0.0)
        restarts += n.get("restarts", 0)
    return depth, msgs, restarts


def _sort_key(
    sort: str, rate: Mapping[str, float], on: str | None
) -> Callable[[dict[str, Any]], Any]:
    def key(info: dict[str, Any]) -> Any:
        if sort in ("path", "node"):
            return (info["name"],)
        depth, msgs, restarts = _aggregate(info, rate, on)
        weight = {"depth": depth, "rate": msgs, "restarts": restarts}[sort]
        return (-weight, info["name"])

    return key


def tree_rows(
    root: dict[str, Any],
    rate: Mapping[str, float] | None = None,
    sort: str = "depth",
    *,
    hide_system: bool = False,
    on: str | None = None,
) -> list[Row]:
    """The rows of one tree, parents first, siblings in `sort`'s order; with
    `hide_system`, without ``/system`` and what is under it."""
    rate = rate or {}
    order = _sort_key(sort, rate, on)
    rows: list[Row] = []

    def walk(info: dict[str, Any], prefix: str, last: bool, top: bool) -> None:
        branch = "" if top else ("└─ " if last else "├─ ")
        key = info["path"] if on is None else f"troupe://{on}{info['path']}"
        rows.append(Row(info, prefix + branch, key, on))
        inner = prefix + ("" if top else ("   " if last else "│  "))
        children = [
            c for c in info.get("children", ()) if not (hide_system and c["path"] == "/system")
        ]
        children.sort(key=order)
        for i, sub in enumerate(children):
            walk(sub, inner, i == len(children) - 1, False)

    walk(root, "", True, True)
    return rows


def forest_rows(
    snapshots: Mapping[str | None, dict[str, Any]],
    rate: Mapping[str, float] | None = None,
    sort: str = "depth",
    *,
    hide_system: bool = False,
) -> list[Row]:
    """The rows of every node's tree (one tree for one system: ``{None: snapshot}``);
    the nodes by name (``--sort node``, ``path``) or by their trees' weight."""
    rate = rate or {}
    names = sorted(snapshots, key=lambda n: n or "")
    if sort not in ("path", "node"):
        names.sort(key=lambda n: _sort_key(sort, rate, n)(snapshots[n]["root"])[0])
    rows: list[Row] = []
    for name in names:
        rows.extend(
            tree_rows(snapshots[name]["root"], rate, sort, hide_system=hide_system, on=name)
        )
    return rows


# -- columns ------------------------------------------------------------------------------


def _count(n: int) -> str:
    """A count in at most about five characters: 20, 9999, 10k, 1.5M."""
    if n < 10_000:
        return str(n)
    if n < 1_000_000:
        return f"{n // 1000}k" if n % 1000 == 0 or n >= 100_000 else f"{n / 1000:.1f}k"
    return f"{n / 1_000_000:.1f}M"


def _seconds(s: float) -> str:
    if s < 60:
        return f"{s:.1f}s"
    if s < 3600:
        return f"{int(s // 60)}m{int(s % 60):02d}s"
    return f"{int(s // 3600)}h{int(s % 3600 // 60):02d}m"


def one_line(text: str) -> str:
    """`text` on one line, control characters shown as spaces."""
    return "".join(c if c.isprintable() else " " for c in text)


def fit(text: str, width: int) -> str:
    """`text` cut to `width` cells, an ellipsis marking the cut."""
    if width <= 0:
        return ""
    if cell_len(text) <= width:
        return text
    return set_cell_size(text, width - 1) + ELLIPSIS


def _now_cell(info: Mapping[str, Any]) -> Segment:
    if not info.get("current"):
        return ("", "")
    text = one_line(f"{info['current']} {_seconds(info.get('current_for') or 0.0)}")
    if info.get("stuck"):
        return (text + " STUCK", "red bold")
    return (text, "")


def _error_cell(info: Mapping[str, Any]) -> Segment:
    error = info.get("last_error")
    if not error:
        return ("", "")
    return (one_line(f"{error['type']}: {error['message']}"), "red")


def _actor_only(cell: Callable[[Mapping[str, Any], Mapping[str, float]], Segment]) -> Any:
    def only(info: Mapping[str, Any], rate: Mapping[str, float]) -> Segment:
        return cell(info, rate) if info.get("kind") == "actor" else ("", "")

    return only


def _rate_cell(info: Mapping[str, Any], rate: Mapping[str, float] | None) -> Segment:
    if rate is None:  # the first frame: no second sample yet
        return ("-", "dim")
    value = rate.get(row_key(info), 0.0)
    return (f"{value:.0f}" if value >= 10 or value == 0 else f"{value:.1f}", "")


@attrs.frozen
class Column:
    name: str
    short: str  # the header on a narrow terminal
    right: bool  # right-justified
    cell: Callable[[Mapping[str, Any], Any], Segment]
    cap: int = 40  # never wider than this (cells are cut with an ellipsis)


COLUMNS = {
    "MAILBOX": Column(
        "MAILBOX",
        "MBOX",
        True,
        _actor_only(
            lambda n, _: (
                f"{_count(n['mailbox_depth'])}/{_count(n['mailbox_capacity'])}",
                "yellow" if n["mailbox_depth"] * 2 > n["mailbox_capacity"] else "",
            )
        ),
    ),
    "MSG/S": Column("MSG/S", "MSG/S", True, _actor_only(_rate_cell)),
    "PROCESSED": Column(
        "PROCESSED", "DONE", True, _actor_only(lambda n, _: (_count(n["processed"]), ""))
    ),
    "RESTARTS": Column(
        "RESTARTS",
        "RST",
        True,
        lambda n, _: (str(n["restarts"]), "yellow" if n["restarts"] else ""),
    ),
    "DEAD": Column("DEAD", "DEAD", True, lambda n, _: (_count(n.get("dead_lettered", 0)), "")),
    "NOW": Column("NOW", "NOW", False, lambda n, _: _now_cell(n), cap=28),
    "LAST ERROR": Column("LAST ERROR", "ERROR", False, lambda n, _: _error_cell(n), cap=400),
    # on a narrow terminal, one column for both: the message in hand, else the last error
    "NOW/ERROR": Column(
        "NOW/ERROR",
        "NOW/ERROR",
        False,
        lambda n, _: _now_cell(n) if n.get("current") else _error_cell(n),
        cap=400,
    ),
}
PRIORITY = ("MAILBOX", "MSG/S", "RESTARTS", "NOW", "LAST ERROR", "PROCESSED", "DEAD")
"""The optional columns, most important first: the first ones that fit are shown."""
NARROW_PRIORITY = ("MAILBOX", "MSG/S", "RESTARTS", "NOW/ERROR", "PROCESSED", "DEAD")
"""The same under `NARROW` columns."""
ORDER = ("MAILBOX", "MSG/S", "PROCESSED", "RESTARTS", "DEAD", "NOW", "LAST ERROR", "NOW/ERROR")
"""Their order left to right (the last error, the widest, last)."""
NARROW = 100
FLEXIBLE = ("LAST ERROR", "NOW/ERROR")  # as wide as what is left, cut with an ellipsis
ERROR_MIN = 14  # the last error is shown only with at least this many cells
ERROR_WANT = 40  # and takes up to this many before less important columns are added


@attrs.frozen
class Layout:
    """The columns shown and their widths (for a frame at one width)."""

    node: int  # the NODE column's width, 0 without one
    label: int  # the tree's
    state: int
    columns: tuple[tuple[Column, str, int], ...]  # (column, header, width)


def layout(
    rows: Sequence[Row],
    rate: Mapping[str, float] | None,
    width: int,
    *,
    with_node: bool = False,
) -> Layout:
    """Choose the columns that fit in `width` cells: the tree (cut only when even
    it and the state do not fit), the state (never cut), then the other columns in
    `PRIORITY` order while they fit; the tree, then the last error, take what is
    left."""
    sep = len(SEPARATOR)
    node_w = max((cell_len(r.node or "") for r in rows), default=0) if with_node else 0
    node_w = min(24, max(node_w, 4)) if with_node else 0
    state_w = max([5, *(len(r.info["state"]) for r in rows)])
    label_natural = max([5, *(cell_len(r.label) for r in rows)])
    label_w = min(label_natural, 32)
    fixed = (node_w + sep if with_node else 0) + state_w + sep
    if fixed + label_w > width:
        label_w = max(8, width - fixed)
    narrow = width < NARROW
    priority = NARROW_PRIORITY if narrow else PRIORITY
    cells = {name: [_cell_text(COLUMNS[name], r.info, rate) for r in rows] for name in priority}
    chosen: dict[str, tuple[str, int]] = {}
    used = fixed + label_w
    for name in priority:
        column = COLUMNS[name]
        natural = min(column.cap, max([0, *(cell_len(c) for c in cells[name])]))
        if not natural and (name == "NOW" or (narrow and name in FLEXIBLE)):
            continue  # nobody busy (no errors): the room goes to the others
        for header in (column.short, column.name) if narrow else (column.name, column.short):
            w = max(natural, len(header))
            if name in FLEXIBLE:  # as wide as it can up to ERROR_WANT, at least ERROR_MIN
                w = max(len(header), min(w, ERROR_WANT, width - used - sep))
                w = max(w, ERROR_MIN)
            if used + sep + w <= width:
                chosen[name] = (header, w)
                used += sep + w
                break
    # what is left: first to the tree, then to the last error, up to their natural widths
    spare = width - used
    grow = min(spare, label_natural - label_w)
    label_w += grow
    spare -= grow
    for name in FLEXIBLE:
        if name in chosen:
            header, w = chosen[name]
            natural = min(COLUMNS[name].cap, max([0, *map(cell_len, cells[name])]))
            chosen[name] = (header, w + max(0, min(spare, natural - w)))
    return Layout(
        node=node_w,
        label=label_w,
        state=state_w,
        columns=tuple((COLUMNS[n], *chosen[n]) for n in ORDER if n in chosen),
    )


def _cell_text(column: Column, info: Mapping[str, Any], rate: Any) -> str:
    return column.cell(info, rate)[0]


def _pad(text: str, width: int, right: bool = False) -> str:
    text = fit(text, width)
    gap = " " * (width - cell_len(text))
    return gap + text if right else text + gap


def table_lines(
    rows: Sequence[Row],
    rate: Mapping[str, float] | None,
    width: int,
    *,
    with_node: bool = False,
    selected: str | None = None,
) -> list[Line]:
    """The header and one line per row, laid out by `layout` for `width`."""
    lay = layout(rows, rate, width, with_node=with_node)
    header: Line = []
    if with_node:
        header.append((_pad("NODE", lay.node) + SEPARATOR, "bold"))
    header.append((_pad("ACTOR", lay.label) + SEPARATOR, "bold"))
    header.append((_pad("STATE", lay.state), "bold"))
    for column, name, w in lay.columns:
        header.append((SEPARATOR + _pad(name, w, column.right), "bold"))
    out = [header]
    for row in rows:
        line: Line = []
        if with_node:
            line.append((_pad(row.node or "", lay.node) + SEPARATOR, "cyan"))
        line.append((_pad(row.label, lay.label) + SEPARATOR, ""))
        line.append((_pad(row.info["state"], lay.state), STATE_STYLES.get(row.info["state"], "")))
        for column, _, w in lay.columns:
            text, style = column.cell(row.info, rate)
            line.append((SEPARATOR + _pad(text, w, column.right), style))
        if row.key == selected:
            line = [(text, "reverse") for text, _ in line]
        out.append(line)
    return out


# -- headers and the detail pane ----------------------------------------------------------


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


def _loop_style(loop: Mapping[str, Any]) -> str:
    return "red" if loop.get("blocked") else ""


def header_lines(
    snapshots: Mapping[str | None, dict[str, Any]],
    *,
    cluster: str | None = None,
    silent: Sequence[str] = (),
    sort: str = "depth",
    hide_system: bool = False,
) -> list[Line]:
    """The lines above the table: the system (or cluster), its actor count, dead
    letters, the sort, and loop health (one line per node in a cluster)."""
    actors = len(_all_rows(snapshots))
    dead: dict[str, int] = {}
    for snap in snapshots.values():
        for reason, count in snap.get("dead_letters", {}).items():
            dead[reason] = dead.get(reason, 0) + count
    first: Line
    if cluster is None:
        [snap] = snapshots.values()
        first = [(f"{snap['system']}  ", "bold"), (f"{actors} actors  ", "")]
    else:
        title = f"cluster {cluster}  " if cluster else "cluster  "
        first = [(title, "bold"), (f"{len(snapshots)} nodes  {actors} actors  ", "")]
    first.append(("dead letters: " + _counts(dead), "red" if any(dead.values()) else ""))
    first.append((f"  sort: {sort}" + ("  /system hidden" if hide_system else ""), "dim"))
    lines = [first]
    if cluster is None:
        loop = next(iter(snapshots.values())).get("loop") or {}
        lines.append([(_loop_text(loop), _loop_style(loop))])
    else:
        for node in sorted(n or "" for n in snapshots):
            loop = snapshots[node].get("loop") or {}
            lines.append([(f"{node}: " + _loop_text(loop), _loop_style(loop))])
        for node in sorted(silent):
            lines.append([(f"{node}: did not answer", "red")])
    return lines


def _clock(at: float) -> str:
    return time.strftime("%H:%M:%S", time.localtime(at))


def detail_lines(
    info: Mapping[str, Any],
    *,
    taken_at: float | None = None,
    restarts_seen: Sequence[float] = (),
    node: str | None = None,
) -> list[Line]:
    """The detail pane of one actor (its snapshot dict): what it is, its state, the
    message in hand and for how long, its mailbox and high-water mark, its
    restarts (those this `top` saw, with their times; else the count and when the
    running incarnation started), its stats and its last error with the
    traceback.  Lines are not cut: the caller fits them."""
    where = f"troupe://{node}{info['path']}" if node else info["path"]
    state = info["state"]
    lines: list[Line] = [
        [
            (one_line(where), "bold"),
            (one_line(f"  {info.get('cls', '?')} ({info.get('kind', '?')})  "), ""),
            (state, STATE_STYLES.get(state, "")),
        ]
    ]
    uptime = info.get("uptime")
    if info.get("kind") == "actor":
        if info.get("current"):
            held = one_line(
                f"in hand: {info['current']} for {_seconds(info.get('current_for') or 0.0)}"
            )
            lines.append([(held, "")] + ([("  STUCK", "red bold")] if info.get("stuck") else []))
        elif info.get("hibernating"):
            lines.append([("in hand: nothing (hibernating until its next message)", "dim")])
        else:
            lines.append([("in hand: nothing (idle)", "dim")])
        lines.append(
            [
                (
                    f"mailbox: {info['mailbox_depth']}/{info['mailbox_capacity']}"
                    f"  high water {info.get('mailbox_high_water', 0)}"
                    f"  processed {info['processed']}  failed {info.get('failed', 0)}"
                    f"  dead-lettered {info.get('dead_lettered', 0)}",
                    "",
                )
            ]
        )
    else:
        children = info.get("children", ())
        lines.append([(f"children: {len(children)}", "")])
    restarts = info.get("restarts", 0)
    text = f"restarts: {restarts}"
    if restarts_seen:
        text += "  seen at " + ", ".join(_clock(t) for t in reversed(restarts_seen))
    if uptime is not None:
        since = f", since {_clock(taken_at - uptime)}" if taken_at else ""
        text += f"  (up {_seconds(uptime)}{since})"
    lines.append([(text, "yellow" if restarts else "")])
    stats = info.get("stats") or {}
    if stats:
        shown = ", ".join(f"{k}={v}" for k, v in stats.items() if not isinstance(v, dict | list))
        if shown:
            lines.append([(one_line("stats: " + shown), "dim")])
    error = info.get("last_error")
    if error:
        lines.append([(one_line(f"last error: {error['type']}: {error['message']}"), "red")])
        for tb_line in (error.get("traceback") or "").rstrip("\n").splitlines():
            if tb_line.strip() and not tb_line.strip().strip("^~"):
                continue  # 3.11's carets under the failing expression: room for more frames
            lines.append([("  " + one_line(tb_line), "")])
    else:
        lines.append([("last error: none", "dim")])
    return lines


def fit_lines(lines: Sequence[Line], width: int) -> list[Line]:
    """Each line cut to `width` cells (an ellipsis marks a cut)."""
    out = []
    for line in lines:
        left = width
        fitted: Line = []
        for text, style in line:
            if left <= 0:
                break
            piece = fit(text, left) if cell_len(text) > left else text
            fitted.append((piece, style))
            left -= cell_len(piece)
        out.append(fitted)
    return out


def plain(lines: Sequence[Line]) -> str:
    """Lines as plain text, trailing blanks removed; no control character of the
    system's (a name, a message type) reaches the terminal."""
    return "".join("".join(one_line(t) for t, _ in line).rstrip() + "\n" for line in lines)


def ansi(line: Line) -> str:
    """A line for the terminal: our own colours, and control characters from the
    system's values (an escape sequence in a name or a message type) as spaces."""
    out = []
    for text, style in line:
        text = one_line(text)
        code = STYLES.get(style)
        out.append(f"\x1b[{code}m{text}\x1b[0m" if code and text else text)
    return "".join(out)


# -- frames -------------------------------------------------------------------------------


def render_text(
    snapshot: dict[str, Any],
    rate: dict[str, float] | None = None,
    sort: str = "depth",
    width: int = 140,
    *,
    hide_system: bool = False,
) -> str:
    """One frame as plain text (what `troupe top --once` prints)."""
    view = View({None: snapshot}, sort=sort, hide_system=hide_system)
    view.rate = rate or {}
    return plain(view.frame(width, None))


def render_cluster_text(
    snapshots: Mapping[str, dict[str, Any]],
    rate: dict[str, float] | None = None,
    sort: str = "depth",
    width: int = 160,
    *,
    cluster: str = "",
    silent: Sequence[str] = (),
    hide_system: bool = False,
) -> str:
    """One cluster frame as plain text (what `troupe top --cluster --once` prints)."""
    view = View(dict(snapshots), sort=sort, hide_system=hide_system, cluster=cluster)
    view.silent = list(silent)
    view.rate = rate or {}
    return plain(view.frame(width, None))


HELP = "q quit  s/1-5 sort  h hide /system  ↑↓ j/k select  PgUp/PgDn  d details"


@attrs.define
class View:
    """What `top` shows: the latest samples, the sort, what is hidden and selected.

    `cluster` is None for one system (`snapshots` is then ``{None: snapshot}``).
    """

    snapshots: dict[Any, dict[str, Any]]
    sort: str = "depth"
    hide_system: bool = False
    cluster: str | None = None
    silent: list[str] = attrs.Factory(list)
    rate: dict[str, float] | None = None  # None until two samples were taken
    selected: str | None = None
    scroll: int = 0
    details: bool = True
    restarts_seen: dict[str, deque[float]] = attrs.Factory(dict)
    _before: dict[str, int] | None = None
    _taken: float = 0.0

    def sample(self, snapshots: Mapping[Any, dict[str, Any]], silent: Sequence[str] = ()) -> None:
        """A new sample: rates since the previous one, restarts seen since then."""
        now = time.monotonic()
        rows = _all_rows(snapshots)
        if self._before is not None:
            self.rate = rates(rows, self._before, now - self._taken)
            old_restarts = {row_key(n): n["restarts"] for n in _all_rows(self.snapshots)}
            for n in rows:
                key = row_key(n)
                if n["restarts"] > old_restarts.get(key, n["restarts"]):
                    taken = snapshots[n.get("node")].get("taken_at") or time.time()
                    started = taken - (n.get("uptime") or 0.0)
                    self.restarts_seen.setdefault(key, deque(maxlen=5)).append(started)
        self.snapshots = dict(snapshots)
        self.silent = list(silent)
        self._before = {row_key(n): n["processed"] for n in rows}
        self._taken = now

    def rows(self) -> list[Row]:
        return forest_rows(self.snapshots, self.rate, self.sort, hide_system=self.hide_system)

    def selected_row(self, rows: Sequence[Row]) -> Row | None:
        for row in rows:
            if row.key == self.selected:
                return row
        return None

    def key(self, key: str, rows: Sequence[Row] | None = None, page: int = 10) -> bool:
        """Handle one key (a name from `read_keys`); True to quit."""
        if key in ("q", "Q", "ctrl-c"):
            return True
        if key == "s":
            self.sort = SORTS[(SORTS.index(self.sort) + 1) % len(SORTS)]
        elif key == "S":
            self.sort = SORTS[(SORTS.index(self.sort) - 1) % len(SORTS)]
        elif len(key) == 1 and key in "12345":
            self.sort = SORTS[int(key) - 1]
        elif key == "h":
            self.hide_system = not self.hide_system
        elif key == "d":
            self.details = not self.details
        else:
            rows = self.rows() if rows is None else rows
            moves = {
                "down": 1,
                "j": 1,
                "up": -1,
                "k": -1,
                "pgdn": page,
                "pgup": -page,
                "home": -len(rows),
                "g": -len(rows),
                "end": len(rows),
                "G": len(rows),
            }
            if key in moves and rows:
                keys = [r.key for r in rows]
                at = keys.index(self.selected) if self.selected in keys else -1
                if at < 0:
                    at = 0 if moves[key] > 0 else len(keys) - 1
                else:
                    at = max(0, min(len(keys) - 1, at + moves[key]))
                self.selected = keys[at]
        return False

    def frame(self, width: int, height: int | None, *, help_line: bool = False) -> list[Line]:
        """One screen: headers, the tree, and (with a selection) the detail pane;
        with `height`, the tree scrolls to keep the selection in sight."""
        rows = self.rows()
        with_node = self.cluster is not None
        head = header_lines(
            self.snapshots,
            cluster=self.cluster,
            silent=self.silent,
            sort=self.sort,
            hide_system=self.hide_system,
        )
        table = table_lines(rows, self.rate, width, with_node=with_node, selected=self.selected)
        chosen = self.selected_row(rows)
        pane: list[Line] = []
        if chosen is not None and self.details:
            snap = self.snapshots[chosen.node]
            pane = detail_lines(
                chosen.info,
                taken_at=snap.get("taken_at"),
                restarts_seen=tuple(self.restarts_seen.get(chosen.key, ())),
                node=chosen.node,
            )
        footer: list[Line] = [[(HELP, "dim")]] if help_line else []
        if height is None:
            rule: list[Line] = [[("─" * width, "dim")]] if pane else []
            return fit_lines([*head, *table, *rule, *pane, *footer], width)
        # on a screen: the tree gets what the headers, the pane and the footer leave
        room = height - len(head) - len(footer) - 1  # 1: the table's header
        if pane:
            pane_h = min(len(pane) + 1, max(5, room // 2))
            if room - pane_h < 3:
                pane_h = 0
            if pane_h:
                pane = self._cut_pane(pane, pane_h - 1)
            room -= pane_h
        body = table[1:]
        room = max(1, room)
        if chosen is not None:
            at = rows.index(chosen)
            if at < self.scroll:
                self.scroll = at
            elif at >= self.scroll + room:
                self.scroll = at - room + 1
        self.scroll = max(0, min(self.scroll, max(0, len(body) - room)))
        shown = body[self.scroll : self.scroll + room]
        filler: list[Line] = [[("", "")]] * (room - len(shown))  # below the pane
        if len(body) > room:
            more = f"rows {self.scroll + 1}-{self.scroll + len(shown)} of {len(body)}"
            footer = [[(more + "  " + HELP if footer else more, "dim")]]
        rule = [[("─" * width, "dim")]] if pane else []
        lines = [*head, table[0], *shown, *rule, *pane, *filler, *footer]
        return fit_lines(lines[:height], width)

    @staticmethod
    def _cut_pane(pane: list[Line], room: int) -> list[Line]:
        """The pane in `room` lines: a long traceback keeps its end (where the error is)."""
        if len(pane) <= room:
            return pane
        if room <= 1:
            return pane[:room]
        firsts = [i for i, line in enumerate(pane) if line and line[0][0].startswith("last error")]
        keep_head = firsts[0] + 1 if firsts else room
        keep_head = min(keep_head, room - 1)
        tail = room - keep_head - 1
        if tail <= 0:
            return [*pane[: room - 1], [(f"  … {len(pane) - room + 1} more lines", "dim")]]
        cut = len(pane) - keep_head - tail
        return [*pane[:keep_head], [(f"  … {cut} lines above", "dim")], *pane[-tail:]]


# -- the terminal -------------------------------------------------------------------------

KEYS = {
    b"\x1b[A": "up",
    b"\x1bOA": "up",
    b"\x1b[B": "down",
    b"\x1bOB": "down",
    b"\x1b[5~": "pgup",
    b"\x1b[6~": "pgdn",
    b"\x1b[H": "home",
    b"\x1bOH": "home",
    b"\x1b[1~": "home",
    b"\x1b[F": "end",
    b"\x1bOF": "end",
    b"\x1b[4~": "end",
    b"\x03": "ctrl-c",
}


def parse_keys(data: bytes) -> list[str]:
    """Key names from bytes a terminal sent: letters as themselves, escape
    sequences as ``up``, ``down``, ``pgup``, ``pgdn``, ``home``, ``end``."""
    out = []
    i = 0
    while i < len(data):
        for seq, name in KEYS.items():
            if data.startswith(seq, i):
                out.append(name)
                i += len(seq)
                break
        else:
            if data[i] == 0x1B:  # an escape sequence we do not know: skip it
                j = i + 1
                if j < len(data) and data[j] in b"[O":
                    j += 1
                    while j < len(data) and not 0x40 <= data[j] <= 0x7E:
                        j += 1
                    j += 1
                else:
                    out.append("escape")
                i = j
                continue
            out.append(chr(data[i]))
            i += 1
    return out


@contextlib.contextmanager
def _cbreak(fd: int | None) -> Iterator[None]:
    """The terminal on `fd` in cbreak mode (keys arrive one by one, unechoed),
    restored however the block ends; nothing when `fd` is None."""
    if fd is None:
        yield
        return
    import termios
    import tty

    saved = termios.tcgetattr(fd)
    try:
        tty.setcbreak(fd, termios.TCSANOW)
        yield
    finally:
        termios.tcsetattr(fd, termios.TCSADRAIN, saved)


@contextlib.contextmanager
def _screen(out: TextIO, on: bool) -> Iterator[None]:
    """The alternate screen with the cursor hidden, left on exit."""
    if not on:
        yield
        return
    out.write("\x1b[?1049h\x1b[?25l\x1b[H\x1b[2J")
    out.flush()
    try:
        yield
    finally:
        out.write("\x1b[0m\x1b[?25h\x1b[?1049l")
        out.flush()


@contextlib.contextmanager
def _term_on_sigterm() -> Iterator[None]:
    """SIGTERM and SIGHUP end `top` as Ctrl-C does (the terminal is restored)."""

    def stop(signum: int, frame: object) -> None:
        raise KeyboardInterrupt

    saved = {}
    try:
        for sig in (signal.SIGTERM, signal.SIGHUP):
            saved[sig] = signal.signal(sig, stop)
    except ValueError:  # not the main thread
        pass
    try:
        yield
    finally:
        for sig, handler in saved.items():
            signal.signal(sig, handler)


def _size(width: int | None, out: TextIO) -> tuple[int, int]:
    try:
        columns, lines = os.get_terminal_size(out.fileno())
    except (OSError, ValueError, AttributeError):
        columns, lines = shutil.get_terminal_size((100, 40))
    if columns <= 0 or lines <= 0:
        columns, lines = shutil.get_terminal_size((100, 40))
    return (width or columns), lines


def _is_tty(stream: TextIO) -> bool:
    try:
        return stream.isatty()
    except (AttributeError, ValueError):
        return False


def live(
    fetch: Callable[[], tuple[dict[Any, dict[str, Any]], list[str]]],
    view: View,
    *,
    interval: float = 1.0,
    once: bool = False,
    width: int | None = None,
    stdin: TextIO | None = None,
    stdout: TextIO | None = None,
) -> None:
    """Run `top`: sample with `fetch` every `interval` seconds and draw `view`.

    `once`: two samples `min(interval, 0.5)` s apart (so rates are real), one
    frame printed, done.  On a terminal: the alternate screen, keys read in cbreak
    mode when stdin is one, the terminal restored on every way out (``q``,
    Ctrl-C, SIGTERM, an error).  Not on a terminal: a frame per sample.
    """
    stdin = sys.stdin if stdin is None else stdin
    stdout = sys.stdout if stdout is None else stdout
    view.sample(*fetch())
    if once:
        time.sleep(min(interval, 0.5))
        view.sample(*fetch())
        columns, _ = _size(width, stdout)
        if _is_tty(stdout) and not os.environ.get("NO_COLOR"):
            stdout.write("".join(ansi(line) + "\n" for line in view.frame(columns, None)))
        else:
            stdout.write(plain(view.frame(columns, None)))
        stdout.flush()
        return
    if not _is_tty(stdout):
        while True:
            columns, _ = _size(width, stdout)
            stdout.write(plain(view.frame(columns, None)) + "\n")
            stdout.flush()
            time.sleep(interval)
            view.sample(*fetch())
    keys_fd = stdin.fileno() if _is_tty(stdin) else None
    with _term_on_sigterm(), _cbreak(keys_fd), _screen(stdout, True):
        due = time.monotonic() + interval
        drawn: tuple[int, int] | None = None
        dirty = True
        while True:
            columns, lines = _size(width, stdout)
            if dirty or drawn != (columns, lines):
                rows = view.rows()
                if rows and view.selected_row(rows) is None:  # at first, or it went away
                    view.selected = rows[0].key
                frame = view.frame(columns - 1, lines, help_line=keys_fd is not None)
                stdout.write("\x1b[H" + "\x1b[K\r\n".join(ansi(line) for line in frame))
                stdout.write("\x1b[K\x1b[J")
                stdout.flush()
                drawn, dirty = (columns, lines), False
            wait = max(0.0, min(due - time.monotonic(), 0.25))
            if keys_fd is not None:
                ready, _, _ = select.select([keys_fd], [], [], wait)
                if ready:
                    data = os.read(keys_fd, 1024)
                    if not data:  # the terminal went away
                        return
                    page = max(1, lines // 2)
                    for key in parse_keys(data):
                        if view.key(key, page=page):
                            return
                    dirty = True
            else:
                time.sleep(wait)
            if time.monotonic() >= due:
                view.sample(*fetch())
                due = max(due + interval, time.monotonic() + interval / 2)
                dirty = True


def run_top(
    client: Client,
    *,
    sort: str = "depth",
    interval: float = 1.0,
    once: bool = False,
    width: int | None = None,
    hide_system: bool = False,
) -> None:
    """`top` of one system through its control socket."""

    from .control import Client, ControlError

    holder = [client]

    def fetch() -> tuple[dict[Any, dict[str, Any]], list[str]]:
        try:
            return {None: holder[0].call("tree")["snapshot"]}, []
        except (ConnectionError, ControlError, OSError):
            # the socket closed this connection (e.g. idle past its limit): connect
            # again; if that fails, the system is gone
            try:
                fresh = Client(holder[0].endpoint)
            except OSError:
                raise ConnectionError("the system stopped") from None
            holder[0].close()
            holder[0] = fresh
            return {None: fresh.call("tree")["snapshot"]}, []

    view = View({}, sort=sort, hide_system=hide_system)
    live(fetch, view, interval=interval, once=once, width=width)


def run_cluster_top(
    fetch: Callable[[], tuple[dict[str, dict[str, Any]], list[str]]],
    *,
    cluster: str = "",
    sort: str = "depth",
    interval: float = 1.0,
    once: bool = False,
    width: int | None = None,
    hide_system: bool = False,
) -> None:
    """`top` across a cluster: `fetch()` returns ``({node: snapshot dict}, [nodes up
    that did not answer])`` (see `ClusterClient.snapshots`); called once per frame."""
    view = View({}, sort=sort, hide_system=hide_system, cluster=cluster)
    live(fetch, view, interval=interval, once=once, width=width)
