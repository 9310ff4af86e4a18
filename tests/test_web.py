"""The live web dashboard (runtime.web): its HTTP API and server-sent events,
`troupe web` as a separate process reading a system through its control
socket, a cluster through NATS, and the page itself in a real headless
Chromium (Debian's chromium + chromium-driver, which `.ci/run` installs)."""

from __future__ import annotations

import io
import json
import os
import pathlib
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import Any

import httpx
import pytest
import trio

import runtime
from runtime import Actor, Supervisor, child
from runtime.testing import crash

ROOT = pathlib.Path(__file__).resolve().parent.parent
CHROMIUM = "/usr/bin/chromium"
CHROMEDRIVER = "/usr/bin/chromedriver"


class Worker(Actor):
    """Answers, and crashes on "boom" (its supervisor restarts it)."""

    async def receive(self, msg: Any) -> Any:
        if msg == "boom":
            raise RuntimeError("boom on purpose")
        if msg == "ignore":
            return runtime.UNHANDLED
        return msg


class Unshowable:
    def __repr__(self) -> str:
        raise ValueError("no repr for you")


def make_tree() -> Supervisor:
    return Supervisor(
        "app",
        children=[
            child(Worker, name="worker"),
            Supervisor("inner", children=[child(Worker, name="leaf")]),
        ],
    )


async def sse(response: httpx.Response) -> AsyncIterator[tuple[str, Any]]:
    """The (event, data) pairs of a server-sent-events response."""
    event = ""
    async for line in response.aiter_lines():
        if line.startswith("event: "):
            event = line[7:]
        elif line.startswith("data: "):
            yield event, json.loads(line[6:])


async def until(condition: Callable[[], Any], what: str, limit: float = 5.0) -> None:
    with trio.move_on_after(limit):
        while not condition():
            await trio.sleep(0.02)
        return
    raise AssertionError(f"timed out waiting for {what}")


@asynccontextmanager
async def dashboard_system() -> AsyncIterator[tuple[runtime.System, httpx.AsyncClient]]:
    async with runtime.open_system(make_tree(), dashboard_port=0) as system:
        url = f"http://127.0.0.1:{system.dashboard.port}"
        async with httpx.AsyncClient(base_url=url, timeout=5.0) as client:
            yield system, client


async def test_json_endpoints_and_the_page() -> None:
    async with dashboard_system() as (system, client):
        page = await client.get("/")
        assert page.status_code == 200 and "<svg" in page.text and "assets/app.js" in page.text
        assert "http" not in page.text.replace("http-equiv", "")  # no CDN: everything is ours
        for asset in ("app.js", "style.css"):
            reply = await client.get(f"/assets/{asset}")
            assert reply.status_code == 200 and len(reply.content) > 1000
        info = (await client.get("/api/info")).json()
        assert info["mode"] == "local" and info["title"] == "app"
        snapshot = (await client.get("/api/snapshot")).json()["snapshot"]
        paths = [c["path"] for c in snapshot["root"]["children"]]
        assert paths == ["/system", "/app"]
        system.ref("/app/worker").tell(Unshowable())  # handled: its repr is never needed
        system.ref("/app/worker").tell("ignore")  # unhandled: a dead letter
        await until(lambda: system.dead_letters.total >= 1, "a dead letter")
        letters = (await client.get("/api/deadletters")).json()
        assert letters["letters"][0]["reason"] == "unhandled"
        assert letters["letters"][0]["recipient"] == "/app/worker"
        assert (await client.get("/api/deadletters?limit=x")).status_code == 400
        assert (await client.get("/api/pattern?pattern=a..b")).json()["ok"] is False
        assert (await client.get("/api/pattern?pattern=jobs.*")).json()["ok"] is True
        assert (await client.get("/nowhere")).status_code == 404
        # read-only and local: other methods and foreign Host headers are refused
        assert (await client.post("/api/info")).status_code == 405
        assert (await client.get("/api/info", headers={"Host": "evil.example"})).status_code == 400


async def test_the_stream_shows_a_crash_as_a_restart() -> None:
    async with dashboard_system() as (system, client):
        with trio.fail_after(10):
            await _restart_seen(system, client)
        history = (await client.get("/api/history")).json()["app"]
        assert len(history) >= 2 and set(history[-1]) == {"t", "rates", "dead", "loop"}


async def _restart_seen(system: runtime.System, client: httpx.AsyncClient) -> None:
    async with client.stream("GET", "/api/stream") as response:
        assert response.headers["content-type"].startswith("text/event-stream")
        crashed = False
        async for event, data in sse(response):
            if event == "init":
                assert "history" in data
                continue
            worker = _find(data["snapshots"]["app"]["root"], "/app/worker")
            assert worker is not None
            if not crashed:
                crash(system.ref("/app/worker"))
                crashed = True
            elif worker["restarts"] == 1:
                assert worker["last_error"]["type"] == "RuntimeError"
                assert "Traceback" in worker["last_error"]["traceback"]
                assert "/app/worker" in data["samples"]["app"]["rates"]
                break


async def test_events_stream_filters_and_shows_what_json_cannot() -> None:
    async with dashboard_system() as (system, client):
        bad = await client.get("/api/events?pattern=a..b")
        assert bad.status_code == 400 and "bad pattern" in bad.json()["error"]
        with trio.fail_after(10):
            seen = await _orders(system, client)
        topics = [e["topic"] for e in seen]
        assert topics == ["orders.odd", "orders.bytes", "orders.new"]
        assert seen[0]["payload"] == {"unencodable": "Unshowable"}
        assert seen[2]["payload"] == {"id": 7} and seen[2]["text"] == '{"id": 7}'
        await _streams_end(system)


async def _orders(system: runtime.System, client: httpx.AsyncClient) -> list[dict[str, Any]]:
    """The events the page gets for ``orders.*`` while four are published."""
    seen: list[dict[str, Any]] = []
    async with client.stream("GET", "/api/events?pattern=orders.*") as response:
        async for event, data in sse(response):
            if event == "hello":
                assert data == {"pattern": "orders.*"}
                system.publish("other.thing", 1)
                system.publish("orders.odd", Unshowable())
                system.publish("orders.bytes", {b"k": {1, 2}})
                system.publish("orders.new", {"id": 7})
            elif event == "events":
                seen.extend(data)
                if any(e["topic"] == "orders.new" for e in seen):
                    break
    return seen


async def _streams_end(system: runtime.System) -> None:
    await until(lambda: system.dashboard.streams == 0, "the streams to end")


async def test_bad_requests_and_hang_ups_leave_the_system_alone() -> None:
    async with dashboard_system() as (system, client):
        port = system.dashboard.port
        for junk in (b"\x00\xff garbage\r\n\r\n", b"GET /" + b"a" * 70000 + b" HTTP/1.1\r\n"):
            stream = await trio.open_tcp_stream("127.0.0.1", port)
            with trio.move_on_after(2):
                await stream.send_all(junk)
                await stream.receive_some(1024)
            await stream.aclose()
        for _ in range(5):  # pages that hang up in the middle of their streams
            async with client.stream("GET", "/api/events?pattern=>") as response:
                async for _event in sse(response):
                    break
            async with client.stream("GET", "/api/stream") as response:
                async for _event in sse(response):
                    break
        await _streams_end(system)
        system.ref("/app/worker").tell("x")
        assert (await client.get("/api/info")).status_code == 200
        assert system.is_running
        assert (await system.ref("/app/worker").ask("still here", timeout=2)) == "still here"


async def test_troupe_web_reads_another_process_through_its_control_socket() -> None:
    folder = pathlib.Path(tempfile.mkdtemp(prefix="troupe-web-"))
    try:
        async with runtime.open_system(
            make_tree(), name="webbed", control=True, control_dir=folder / "troupe"
        ) as system:
            env = {**os.environ, "XDG_RUNTIME_DIR": str(folder), "PYTHONPATH": str(ROOT)}
            proc = subprocess.Popen(
                [sys.executable, "-m", "runtime", "web", "webbed", "--port", "0"],
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                text=True,
                env=env,
            )
            try:
                line = await trio.to_thread.run_sync(proc.stdout.readline)  # type: ignore[union-attr]
                assert "system webbed on http://127.0.0.1:" in line, line + proc.stderr.read()  # type: ignore[union-attr]
                url = line.split(" on ", 1)[1].split()[0]
                with trio.fail_after(15):  # a bound that only a hang reaches
                    async with httpx.AsyncClient(base_url=url, timeout=5.0) as client:
                        snapshot = (await client.get("/api/snapshot")).json()["snapshot"]
                        assert snapshot["system"] == "webbed"
                        async with client.stream("GET", "/api/events?pattern=system.actor.>") as r:
                            async for event, data in sse(r):
                                if event == "hello":
                                    crash(system.ref("/app/inner/leaf"))
                                if event == "events" and any(
                                    e["topic"] == "system.actor.restarted" for e in data
                                ):
                                    break
                        system.ref("/app/worker").tell("ignore")  # a dead letter

                        async def letters() -> list[Any]:
                            reply = await client.get("/api/deadletters")
                            found: list[Any] = reply.json()["letters"]
                            return found

                        with trio.fail_after(5):
                            while not await letters():
                                await trio.sleep(0.1)
                        assert (await letters())[0]["reason"] == "unhandled"
                        async with client.stream("GET", "/api/stream") as r:
                            async for _event, data in sse(r):
                                leaf = _find(data["snapshots"]["webbed"]["root"], "/app/inner/leaf")
                                if leaf is not None and leaf["restarts"] == 1:
                                    break
            finally:
                proc.terminate()
                proc.wait(5)
    finally:
        shutil.rmtree(folder, ignore_errors=True)


def _find(node: dict[str, Any], path: str) -> dict[str, Any] | None:
    if node["path"] == path:
        return node
    for sub in node["children"]:
        if (hit := _find(sub, path)) is not None:
            return hit
    return None


def test_troupe_web_without_a_system_says_so() -> None:
    env = {**os.environ, "XDG_RUNTIME_DIR": tempfile.mkdtemp(), "PYTHONPATH": str(ROOT)}
    done = subprocess.run(
        [sys.executable, "-m", "runtime", "web", "nothing-here", "--port", "0"],
        capture_output=True,
        text=True,
        env=env,
        timeout=30,
    )
    assert done.returncode == 2 and "no running system called 'nothing-here'" in done.stderr


async def test_a_cluster_is_shown_node_by_node(nats_server: Any) -> None:
    from runtime.cluster.client import ClusterClient
    from runtime.web import ClusterSource, Dashboard

    options: dict[str, Any] = {"cluster_name": "tweb", "heartbeat": 0.2, "node_down_after": 1.5}
    url = nats_server.url
    async with (
        runtime.open_system(make_tree(), name="alpha", node="alpha", cluster=url, **options),
        runtime.open_system(make_tree(), name="beta", node="beta", cluster=url, **options) as beta,
    ):
        beta.ref("/app/worker").tell("ignore")  # unhandled: a dead letter on beta
        await until(lambda: beta.dead_letters.total >= 1, "a dead letter")
        source = ClusterSource(lambda: ClusterClient(nats_server.url, cluster_name="tweb"))
        dashboard = Dashboard(source, 0, interval=0.3)
        try:
            async with trio.open_nursery() as nursery:
                await nursery.start(dashboard.serve)
                async with httpx.AsyncClient(base_url=dashboard.url, timeout=5.0) as client:

                    async def names() -> set[str]:
                        frame = (await client.get("/api/info")).json()
                        return {n["name"] for n in frame["nodes"] if n["status"] == "up"}

                    with trio.fail_after(8):
                        while await names() != {"alpha", "beta"}:
                            await trio.sleep(0.1)
                    reply = (await client.get("/api/snapshot?node=beta")).json()
                    assert reply["snapshot"]["system"] == "beta"
                    letters = (await client.get("/api/deadletters?node=beta")).json()
                    assert [(x["recipient"], x["reason"]) for x in letters["letters"]] == [
                        ("/app/worker", "unhandled")
                    ]
                    assert letters["letters"][0]["text"] == "'ignore'"
                    missing = (await client.get("/api/deadletters?node=gamma")).json()
                    assert missing["letters"] is None  # no such node: nothing to show
                nursery.cancel_scope.cancel()
        finally:
            source.close()


# -- the page, in a real browser ---------------------------------------------------


def _browser(profile: str) -> Any:
    if not (os.path.exists(CHROMIUM) and os.path.exists(CHROMEDRIVER)):
        pytest.fail(
            "Chromium is missing: apt-get install chromium chromium-driver (.ci/run does)",
            pytrace=False,
        )
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in (
        "--headless=new",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-quic",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--disable-dev-shm-usage",
        "--window-size=1400,1000",
        f"--user-data-dir={profile}",
    ):
        options.add_argument(flag)
    return webdriver.Chrome(service=Service(executable_path=CHROMEDRIVER), options=options)


def _wait(driver: Any, condition: Callable[[], Any], what: str, limit: float = 6.0) -> Any:
    deadline = time.monotonic() + limit
    while time.monotonic() < deadline:
        try:
            value = condition()
        except Exception:  # the page is rewriting what we look at: look again
            value = None
        if value:
            return value
        time.sleep(0.05)
    raise AssertionError(f"timed out waiting for {what}; page says: {driver.title}")


def test_the_page_in_headless_chromium() -> None:
    from PIL import Image
    from selenium.webdriver.common.by import By

    profile = tempfile.mkdtemp(prefix="troupe-chromium-")
    try:
        with runtime.start_in_thread(make_tree(), dashboard_port=0) as handle:
            driver = _browser(profile)
            try:
                driver.get(handle.dashboard.url)
                row = '.row[data-path="/app/worker"]'
                # the tree is there, every actor with its state colour
                _wait(driver, lambda: driver.find_elements(By.CSS_SELECTOR, row), "the tree")
                # (read in one script: the rows are redrawn each tick, so elements go stale)
                paths = driver.execute_script(
                    "return [...document.querySelectorAll('#tree .row')].map(r => r.dataset.path)"
                )
                assert {"/", "/app", "/app/inner/leaf", "/system/bus"} <= set(paths)
                colour = driver.execute_script(
                    "return getComputedStyle(document.querySelector(arguments[0])).backgroundColor",
                    f"{row} .dot",
                )
                assert colour == "rgb(46, 157, 91)"  # running
                # a crash shows up as a restart within a few seconds
                handle.ref("/app/worker").tell("boom")

                def restarted() -> bool:
                    element = driver.find_element(By.CSS_SELECTOR, row)
                    return element.get_attribute("data-restarts") == "1"

                _wait(driver, restarted, "the restart to show")

                def select() -> bool:  # rows are redrawn each tick: a row may go stale
                    driver.find_element(By.CSS_SELECTOR, row).click()
                    return True

                _wait(driver, select, "a click on the row")
                _wait(
                    driver,
                    lambda: "boom on purpose" in driver.find_element(By.ID, "detail").text,
                    "the detail pane's last error",
                )
                _wait(
                    driver,
                    lambda: "Traceback" in driver.find_element(By.CSS_SELECTOR, "#detail pre").text,
                    "the traceback",
                )
                # the event filter: only what matches the pattern is listed
                pattern = driver.find_element(By.ID, "event-pattern")
                pattern.clear()
                pattern.send_keys("orders.*")
                driver.find_element(By.ID, "event-apply").click()
                _wait(
                    driver,
                    lambda: "orders.*" in driver.find_element(By.ID, "event-note").text,
                    "the filter to apply",
                )
                time.sleep(0.3)  # the page's stream is open: publish
                handle.publish("other.thing", {"n": 1})
                handle.publish("orders.new", {"id": 42})
                new = '.event[data-topic="orders.new"]'
                _wait(
                    driver,
                    lambda: '{"id": 42}' in driver.find_element(By.CSS_SELECTOR, new).text,
                    "the matching event",
                )
                assert not driver.find_elements(By.CSS_SELECTOR, '.event[data-topic="other.thing"]')
                pattern.clear()
                pattern.send_keys("a..b")
                driver.find_element(By.ID, "event-apply").click()
                _wait(
                    driver,
                    lambda: "bad pattern" in driver.find_element(By.ID, "event-note").text,
                    "a bad pattern to be refused",
                )
                # the picture is a picture: many colours, not a blank page
                png = driver.get_screenshot_as_png()
                image = Image.open(io.BytesIO(png)).convert("RGB")
                assert image.size[0] >= 1000
                colours = image.getcolors(maxcolors=1 << 20)
                assert colours is not None and len(colours) > 50, len(colours or ())
                assert handle.is_running
            finally:
                driver.quit()
    finally:
        shutil.rmtree(profile, ignore_errors=True)
