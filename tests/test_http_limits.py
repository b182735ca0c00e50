"""One client cannot take a node's HTTP server for itself: connection caps, header and body deadlines, a rate.

The attack (issue 15, item 4): 1,100 connections that never finish their headers used up the validator's
file descriptors, and one client could send requests as fast as its link allowed. Each test runs against a
real stage server (the same guard serves the validator's API: the last test).
"""

from __future__ import annotations

import asyncio
from types import SimpleNamespace

import aiohttp
from aiohttp import web

from node.http.limits import HttpGuard, HttpLimits
from node.pipeline.server import StageServer
from node.protocol.signing import SigningKey


async def open_slowly(port: int) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(b"GET /health HTTP/1.1\r\nHost: stage\r\n")  # and never the blank line that ends the headers
    await writer.drain()
    return reader, writer


async def closed(reader: asyncio.StreamReader) -> bool:
    try:
        return await asyncio.wait_for(reader.read(1), 0.05) == b""
    except asyncio.TimeoutError:
        return False
    except ConnectionError:
        return True


async def test_slow_connections_are_capped_per_client_and_closed_when_their_headers_do_not_arrive():
    limits = HttpLimits(max_per_client=5, header_timeout_s=0.6)
    server = StageServer(SigningKey.generate(), http_limits=limits)
    await server.start()
    try:
        connections = [await open_slowly(server.port) for _ in range(12)]
        await asyncio.sleep(0.2)
        still_open = [not await closed(reader) for reader, _ in connections]
        assert sum(still_open) == 5  # the rest were closed as they came
        await asyncio.sleep(0.8)
        assert all([await closed(reader) for reader, _ in connections])  # no headers in time: closed
        for _, writer in connections:
            writer.close()
        async with aiohttp.ClientSession() as session, session.get(server.url + "/health") as response:
            assert response.status == 200  # an honest client is served as before
        assert server.http_guard.refused_connections == 7
    finally:
        await server.stop()


async def test_a_body_that_never_arrives_is_answered_408_and_the_connection_closed():
    server = StageServer(SigningKey.generate(), http_limits=HttpLimits(body_timeout_s=0.3))
    await server.start()
    try:
        reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
        writer.write(b"PUT /v1/assignment HTTP/1.1\r\nHost: stage\r\nContent-Length: 1000\r\n\r\n" + b"{" * 10)
        await writer.drain()
        answer = await asyncio.wait_for(reader.readuntil(b'"body_timeout"'), 5)
        assert answer.startswith(b"HTTP/1.1 408")
        writer.close()
    finally:
        await server.stop()


async def test_a_flood_from_one_client_is_answered_429_with_retry_after():
    server = StageServer(SigningKey.generate(), http_limits=HttpLimits(requests_per_s=1, burst=5))
    await server.start()
    try:
        async with aiohttp.ClientSession() as session:
            statuses = []
            for _ in range(8):
                async with session.get(server.url + "/health") as response:
                    statuses.append(response.status)
                    if response.status == 429:
                        body = await response.json()
                        assert body["error"]["code"] == "rate_limited" and int(response.headers["Retry-After"]) >= 1
        assert statuses == [200] * 5 + [429] * 3
        assert server.http_guard.throttled_requests == 3
    finally:
        await server.stop()


async def test_the_validator_api_is_guarded_the_same_way(tmp_path):
    from node.validator.app import build_app
    from node.validator.config import ValidatorConfig

    guard = HttpGuard(HttpLimits(requests_per_s=1, burst=2))
    app = build_app(SimpleNamespace(config=ValidatorConfig()), dashboard=False, guard=guard)
    app.router.add_get("/ping", lambda request: web.json_response({"ok": True}))
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    guard(runner)
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]
    try:
        async with aiohttp.ClientSession() as session:
            statuses = []
            for _ in range(3):
                async with session.get(f"http://127.0.0.1:{port}/ping") as response:
                    statuses.append(response.status)
        assert statuses == [200, 200, 429]
    finally:
        await runner.cleanup()


async def test_idle_connections_from_many_addresses_make_room_for_a_client_with_a_request():
    # Found by the review: 8 addresses x 128 idle sockets filled the 1,024-connection cap and honest clients
    # were turned away. A new connection past the cap now takes the place of the oldest idle one.
    server = StageServer(SigningKey.generate(), http_limits=HttpLimits(max_connections=20, max_per_client=5))
    await server.start()
    try:
        idle = []
        for host in ("127.0.0.2", "127.0.0.3", "127.0.0.4", "127.0.0.5"):
            for _ in range(5):
                reader, writer = await asyncio.open_connection("127.0.0.1", server.port, local_addr=(host, 0))
                idle.append((reader, writer))
        await asyncio.sleep(0.1)
        async with aiohttp.ClientSession() as session, session.get(server.url + "/health") as response:
            assert response.status == 200
        assert sum([await closed(reader) for reader, _ in idle]) >= 1
        for _, writer in idle:
            writer.close()
    finally:
        await server.stop()


def test_a_client_is_an_ipv4_address_or_an_ipv6_slash_64():
    from node.http.limits import client_of

    assert client_of("203.0.113.7") == "203.0.113.7"
    assert client_of("2001:db8:1:2:aaaa::1") == client_of("2001:db8:1:2:ffff::9") == "2001:db8:1:2::/64"
    assert client_of("2001:db8:1:3::1") != client_of("2001:db8:1:2::1")
    assert client_of("::ffff:203.0.113.7") == "203.0.113.7"
    assert client_of(None) == "?"
