"""Attack on the faces' JSON with values JSON has no literal for: NaN and the
infinities, in an actor's ``snapshot_stats()``, an ask's reply and an event's
payload.  Python's `json` writes them as the bare words ``NaN`` and ``Infinity``,
which no other JSON parser takes: the dashboard's page (``JSON.parse`` in the
browser) could read no frame at all once one actor's stats held a NaN."""

from __future__ import annotations

import json
import math
import pathlib
import tempfile
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

import runtime
from runtime import Actor, Supervisor, child
from runtime.control import Client, pick, to_json
from runtime.web.sources import event_row

WAIT = 15.0


def strict(text: str) -> Any:
    """`text` read as any JSON parser but Python's reads it (RFC 8259: no NaN)."""

    def refuse(word: str) -> Any:
        raise ValueError(f"not JSON: {word}")

    return json.loads(text, parse_constant=refuse)


class Odd(Actor):
    def snapshot_stats(self) -> dict[str, Any]:
        return {"ratio": math.nan, "ceiling": math.inf, "floor": -math.inf, "n": 1}

    async def receive(self, msg: Any) -> Any:
        return [math.nan, math.inf] if msg == "odd" else msg


@pytest.fixture
def system() -> Iterator[tuple[Any, pathlib.Path]]:
    folder = pathlib.Path(tempfile.mkdtemp(prefix="atk2-json-")) / "troupe"
    tree = Supervisor("app", children=[child(Odd, name="odd")])
    with runtime.start_in_thread(tree, dashboard_port=0, control=True, control_dir=folder) as s:
        yield s, folder


def test_non_finite_floats_are_shown_as_text_in_strict_json() -> None:
    value = {"a": math.nan, "b": [math.inf, -math.inf], math.nan: 1.5, "c": 2}
    assert strict(to_json(value)) == {"a": "nan", "b": ["inf", "-inf"], "NaN": 1.5, "c": 2}
    row = event_row({"topic": "t", "payload": math.nan})
    assert strict(json.dumps(row)) == {"topic": "t", "payload": "nan", "text": '"nan"'}


def test_the_dashboard_and_the_control_socket_send_strict_json(
    system: tuple[Any, pathlib.Path],
) -> None:
    running, folder = system
    url = f"http://127.0.0.1:{running.dashboard.port}"
    with httpx.Client(timeout=WAIT) as http:
        snapshot = strict(http.get(f"{url}/api/snapshot").text)["snapshot"]
        with http.stream("GET", f"{url}/api/stream") as stream:
            for line in stream.iter_lines():
                if line.startswith("data:"):
                    strict(line[5:])  # the page's first frame (``init``)
                    break
    [app] = [node for node in snapshot["root"]["children"] if node["name"] == "app"]
    [odd] = app["children"]
    assert odd["stats"] == {"ratio": "nan", "ceiling": "inf", "floor": "-inf", "n": 1}
    with Client(pick(None, folder), timeout=WAIT) as client:
        client.send({"op": "tree"})
        strict(_line(client))
        # not plain JSON: the reply comes as its repr (as any other such value)
        client.send({"op": "ask", "path": "/app/odd", "message": "odd"})
        reply = strict(_line(client))
        assert (reply["reply_repr"], reply["reply_type"]) == ("[nan, inf]", "list"), reply


def _line(client: Client) -> str:
    data = b""
    while not data.endswith(b"\n"):
        chunk = client.sock.recv(65536)
        assert chunk, "the system closed the connection"
        data += chunk
    return data.decode()
