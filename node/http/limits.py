"""What one client may cost an HTTP server of the node: connections, request rate, and time to send a request.

aiohttp bounds the size of a request line, its headers and its body, but not how many connections one
client holds nor how slowly it sends: 1,100 connections that never finish their headers used up the
validator's file descriptors. `HttpGuard` adds, on the validator's API and on every stage server:

- at most `max_connections` open connections (a new one past that takes the place of the oldest that has
  not yet sent a request, or is closed when every one is busy), and `max_per_client` from one client (more
  are closed at once);
- a connection must finish a request's headers within `header_timeout_s` of opening (or of its previous
  answer), and a request's body within `body_timeout_s` (408), or it is closed;
- a token bucket per address: `requests_per_s` on average, bursts of `burst`; past it, 429 with
  Retry-After.

A client is a remote IPv4 address, or an IPv6 /64 (one host can use every address of its /64). Limits go
by the socket's remote address: behind a proxy, put the limits in the proxy.
"""

from __future__ import annotations

import asyncio
import collections
import ipaddress
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from aiohttp import web

from node import settings

log = logging.getLogger("stagewise.http")

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
MAX_CLIENTS_TRACKED = 100_000  # rate buckets kept; the least recently seen client is forgotten first


@dataclass(frozen=True)
class HttpLimits:
    max_connections: int = settings.MAX_CONNECTIONS.default
    max_per_client: int = settings.MAX_CONNECTIONS_PER_CLIENT.default
    header_timeout_s: float = settings.HEADER_TIMEOUT.default
    body_timeout_s: float = 3 * settings.HEADER_TIMEOUT.default
    requests_per_s: float = settings.REQUESTS_PER_SECOND.default
    burst: int = 1000

    def __post_init__(self) -> None:
        if min(self.max_connections, self.max_per_client, self.burst) < 1:
            raise ValueError("connection caps and the burst are at least 1")
        if min(self.header_timeout_s, self.body_timeout_s, self.requests_per_s) <= 0:
            raise ValueError("timeouts and the request rate are positive")


class _Bucket:
    __slots__ = ("tokens", "at")

    def __init__(self, tokens: float, at: float) -> None:
        self.tokens, self.at = tokens, at


class HttpGuard:
    """Install on a running server with `guard(runner)` after `runner.setup()`; add `guard.middleware`."""

    def __init__(
        self,
        limits: HttpLimits = HttpLimits(),
        *,
        on_refused: Callable[[web.Request, str], None] | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        """`on_refused(request, code)` hears of every request the guard answers itself (metrics)."""
        self.limits = limits
        self.on_refused = on_refused
        self.clock = clock
        self.refused_connections = 0
        self.throttled_requests = 0
        self._per_client: collections.Counter[str] = collections.Counter()
        self._client_of: dict[object, str] = {}
        self._deadlines: dict[object, tuple[asyncio.TimerHandle, asyncio.BaseTransport]] = {}  # oldest first
        self._buckets: collections.OrderedDict[str, _Bucket] = collections.OrderedDict()  # least recent first

    def __call__(self, runner: web.BaseRunner) -> None:
        """Watch the connections of `runner`'s server (call after `runner.setup()`, before a site starts)."""
        server = runner.server
        made, lost = server.connection_made, server.connection_lost

        def connection_made(handler, transport) -> None:
            made(handler, transport)
            self._opened(handler, transport)

        def connection_lost(handler, exc=None) -> None:
            self._closed(handler)
            lost(handler, exc)

        server.connection_made, server.connection_lost = connection_made, connection_lost

    @web.middleware
    async def middleware(self, request: web.Request, handler: Handler) -> web.StreamResponse:
        protocol = request.protocol
        self._disarm(protocol)
        try:
            refused = await self._refusal(request)
            if refused is not None:
                if self.on_refused is not None:
                    self.on_refused(request, refused.code)
                return refused.response
            return await handler(request)
        finally:
            if protocol is not None and protocol in self._client_of:
                self._arm(protocol, protocol.transport)  # the next request's headers are due in time too

    async def _refusal(self, request: web.Request) -> _Refusal | None:
        """The answer to a request over its client's rate, or whose body is too slow or too big; else None
        (its body, if any, is then read and kept for the handler)."""
        client = client_of(request.remote)
        wait = self._take_token(client)
        if wait > 0:
            self.throttled_requests += 1
            return _Refusal(
                429, "rate_limited", f"more than {self.limits.requests_per_s:g} requests per second from {client}; "
                f"retry in {wait:.1f} s", {"Retry-After": str(max(1, round(wait)))},
            )
        if not request.body_exists:
            return None
        try:
            await asyncio.wait_for(request.read(), self.limits.body_timeout_s)
            return None
        except asyncio.TimeoutError:
            refusal = _Refusal(408, "body_timeout", f"the body did not arrive within {self.limits.body_timeout_s:g} s")
        except web.HTTPRequestEntityTooLarge:
            limit = getattr(request, "_client_max_size", None)
            refusal = _Refusal(413, "body_too_large", f"the request body is larger than this node accepts ({limit} bytes)")
        refusal.response.force_close()  # the rest of the body is unread: the connection can carry nothing more
        return refusal

    # ---------------------------------------------------------------------------------------- connections

    def _opened(self, handler, transport) -> None:
        peer = transport.get_extra_info("peername")
        client = client_of(str(peer[0]) if isinstance(peer, tuple) and peer else None)
        if len(self._client_of) >= self.limits.max_connections and self._per_client[client] < self.limits.max_per_client:
            self._close_oldest_idle()
        if len(self._client_of) >= self.limits.max_connections or self._per_client[client] >= self.limits.max_per_client:
            self.refused_connections += 1
            if self.refused_connections in (1, 10, 100) or self.refused_connections % 1000 == 0:
                log.warning("refused a connection from %s (%d open from it, %d in all; %d refused so far)",
                            client, self._per_client[client], len(self._client_of), self.refused_connections)
            transport.close()
            return
        self._client_of[handler] = client
        self._per_client[client] += 1
        self._arm(handler, transport)

    def _closed(self, handler) -> None:
        self._disarm(handler)
        client = self._client_of.pop(handler, None)
        if client is not None:
            self._per_client[client] -= 1
            if self._per_client[client] <= 0:
                del self._per_client[client]

    def _arm(self, handler, transport) -> None:
        self._disarm(handler)
        if transport is None or transport.is_closing():
            return
        loop = asyncio.get_running_loop()
        timer = loop.call_later(self.limits.header_timeout_s, self._too_slow, handler, transport)
        self._deadlines[handler] = (timer, transport)

    def _disarm(self, handler) -> None:
        armed = self._deadlines.pop(handler, None)
        if armed is not None:
            armed[0].cancel()

    def _close_oldest_idle(self) -> None:
        """Make room: close the connection that has waited longest without sending a request."""
        for handler, (_, transport) in self._deadlines.items():
            if not transport.is_closing():
                self._closed(handler)  # counted out now; its connection_lost comes later and finds nothing
                transport.close()
                return

    def _too_slow(self, handler, transport) -> None:
        self._deadlines.pop(handler, None)
        log.debug("closing a connection from %s: no request within %g s", self._client_of.get(handler),
                  self.limits.header_timeout_s)
        transport.close()

    # ---------------------------------------------------------------------------------------- rate

    def _take_token(self, client: str) -> float:
        """0 when `client` may send this request now, else the seconds until it may."""
        now = self.clock()
        bucket = self._buckets.get(client)
        if bucket is None:
            if len(self._buckets) >= MAX_CLIENTS_TRACKED:  # forget the least recent client, in O(1)
                self._buckets.popitem(last=False)
            bucket = self._buckets[client] = _Bucket(float(self.limits.burst), now)
        else:
            self._buckets.move_to_end(client)
        bucket.tokens = min(float(self.limits.burst), bucket.tokens + (now - bucket.at) * self.limits.requests_per_s)
        bucket.at = now
        if bucket.tokens >= 1.0:
            bucket.tokens -= 1.0
            return 0.0
        return (1.0 - bucket.tokens) / self.limits.requests_per_s


def client_of(address: str | None) -> str:
    """Who a remote address belongs to, for the limits: an IPv4 address, or the /64 of an IPv6 one."""
    if not address:
        return "?"
    try:
        ip = ipaddress.ip_address(address)
    except ValueError:
        return address
    if ip.version == 4:
        return str(ip)
    if ip.ipv4_mapped is not None:
        return str(ip.ipv4_mapped)
    return str(ipaddress.ip_network(f"{ip}/64", strict=False))


class _Refusal:
    """A request the guard answers itself: the JSON error every API of the node uses."""

    def __init__(self, status: int, code: str, message: str, headers: dict[str, str] | None = None) -> None:
        self.code = code
        self.response = web.json_response({"error": {"code": code, "message": message}}, status=status, headers=headers)


def limits_from_args(args) -> HttpLimits:
    defaults = HttpLimits()
    return HttpLimits(
        max_connections=args.max_connections,
        max_per_client=args.max_connections_per_client,
        header_timeout_s=args.header_timeout,
        body_timeout_s=args.header_timeout * defaults.body_timeout_s / defaults.header_timeout_s,
        requests_per_s=args.requests_per_second,
    )
