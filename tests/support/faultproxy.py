"""A fault-injecting HTTP/1.1 proxy between S3 clients and an S3 server (moto), for resilience tests.

    with FaultProxy(moto.endpoint, seed=1) as proxy:
        env = s3_env(proxy.endpoint)                 # clients talk to the proxy
        proxy.set(latency=0.05, error_rate=0.1)      # any time, from any thread
        ...
        proxy.counters["errors"], proxy.events

It relays requests one by one (Content-Length, chunked, ``Expect: 100-continue``, keep-alive), and
decides per request, from a seeded generator:
- latency (+ uniform jitter) before the request is forwarded;
- a bandwidth cap (bytes/s, shared by all connections and both directions);
- ``error_rate``: answered ``503 SlowDown`` (S3 XML body, ``Connection: close``), never forwarded;
- ``reset_rate``: the client connection is reset (TCP RST) mid-body: of the request upload (the
  server never gets it whole) or of the response (the server did the work);
- ``truncate_rate``: the response is cut short and the connection closed cleanly (FIN).
``inject("reset", ...)`` scripts the faults of the next matching requests exactly, before the rates.
moto's server closes its connection after every response; with ``keep_alive`` (the default) the proxy
keeps client connections open anyway, as AWS does, and opens a new server connection per request.

The proxy runs its own event loop in a daemon thread. As a separate process:
``python -m tests.support.faultproxy --upstream http://127.0.0.1:PORT --latency 0.02``.
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import dataclasses
import random
import re
import socket
import struct
import threading
import uuid
from dataclasses import dataclass
from types import TracebackType
from typing import Any, Literal, NamedTuple
from urllib.parse import urlsplit

from .http11 import HEAD_LIMIT, Framing, Head, discard, read_head, relay_body

Fault = Literal["ok", "error", "reset", "truncate"]
ResetPhase = Literal["any", "request", "response"]

COUNTER_NAMES = (
    "connections",  # client connections accepted
    "upstream_connections",  # connections opened to the server
    "requests",  # requests read from clients
    "delayed",  # requests given latency
    "errors",  # requests answered 503
    "resets",  # connections reset
    "truncations",  # responses cut short
    "bytes_up",  # bytes forwarded to the server
    "bytes_down",  # bytes forwarded to clients
)
_FAULT_COUNTER = {"error": "errors", "reset": "resets", "truncate": "truncations"}


@dataclass(frozen=True)
class Faults:
    """What the proxy does to traffic; replaced as a whole by `FaultProxy.set`."""

    latency: float = 0.0
    """Seconds added before each request is forwarded."""
    jitter: float = 0.0
    """The delay is ``latency + uniform(-jitter, jitter)``, never below 0."""
    bandwidth: float | None = None
    """Cap in bytes/s on all traffic through the proxy (None: no cap)."""
    error_rate: float = 0.0
    """Fraction of requests answered 503 SlowDown without reaching the server."""
    reset_rate: float = 0.0
    """Fraction of requests whose client connection is reset mid-body."""
    truncate_rate: float = 0.0
    """Fraction of requests whose response is cut short, then closed cleanly."""
    reset_phase: ResetPhase = "any"
    """Where a reset falls: the request upload, the response, or either (by chance)."""
    match: str | None = None
    """Regex searched in ``"METHOD /path?query"``: only matching requests get latency or faults."""

    def __post_init__(self) -> None:
        rates = (self.error_rate, self.reset_rate, self.truncate_rate)
        if any(not 0.0 <= r <= 1.0 for r in rates) or sum(rates) > 1.0 + 1e-9:
            raise ValueError(f"fault rates must be in [0, 1] and sum to at most 1, got {rates}")
        if self.latency < 0 or self.jitter < 0:
            raise ValueError("latency and jitter must be >= 0")
        if self.bandwidth is not None and self.bandwidth <= 0:
            raise ValueError("bandwidth must be > 0 bytes/s, or None")
        if self.reset_phase not in ("any", "request", "response"):
            raise ValueError(f"reset_phase must be any, request or response, got {self.reset_phase!r}")
        if self.match is not None:
            re.compile(self.match)


class Event(NamedTuple):
    """One request seen by the proxy, and the fault it got."""

    method: str
    target: str
    fault: Fault


class _CutReached(Exception):
    """The byte chosen for a reset or a truncation was reached."""


class _Cut:
    """Where a stream is cut: at byte `at`; or, while `at` is None, inside the first write that
    starts at or after byte `after` (for bodies of unknown length)."""

    def __init__(self, rng: random.Random) -> None:
        self.at: int | None = None
        self.after: int | None = None
        self.pos = 0
        self._rng = rng

    def clip(self, data: bytes) -> tuple[bytes, bool]:
        """The part of `data` to send, and whether the cut is reached."""
        if self.at is None and self.after is not None and self.pos >= self.after and data:
            self.at = self.pos + self._rng.randrange(len(data))
        if self.at is not None and self.pos + len(data) >= self.at:
            keep = max(0, self.at - self.pos)
            self.pos += keep
            return data[:keep], True
        self.pos += len(data)
        return data, False


class _Sink:
    """One direction of one exchange: throttled, counted, and maybe cut."""

    def __init__(self, proxy: FaultProxy, writer: asyncio.StreamWriter, counter: str, cut: _Cut | None) -> None:
        self._proxy = proxy
        self._writer = writer
        self._counter = counter
        self.cut = cut

    async def write(self, data: bytes) -> None:
        """Send `data`, or its part before the cut and then raise `_CutReached`."""
        hit = False
        if self.cut is not None:
            data, hit = self.cut.clip(data)
        if data:
            await self._proxy._throttle(len(data))
            self._writer.write(data)
            await self._writer.drain()
            self._proxy._count(self._counter, len(data))
        if hit:
            raise _CutReached


class _Upstream:
    """The server side of one client connection, opened when needed."""

    def __init__(self, proxy: FaultProxy) -> None:
        self._proxy = proxy
        self.reader: asyncio.StreamReader | None = None
        self.writer: asyncio.StreamWriter | None = None

    async def open(self) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
        """An open connection to the server."""
        if self.reader is None or self.writer is None or self.reader.at_eof() or self.writer.is_closing():
            self.close()
            host, port = self._proxy.upstream
            self.reader, self.writer = await asyncio.open_connection(host, port, limit=HEAD_LIMIT)
            self._proxy._count("upstream_connections")
        return self.reader, self.writer

    def close(self) -> None:
        """Drop the connection (abruptly: a half-sent request is cut)."""
        if self.writer is not None:
            self.writer.transport.abort()
        self.reader = self.writer = None


def slow_down_response(method: str) -> bytes:
    """A complete S3 ``503 SlowDown`` response that closes the connection."""
    request_id = uuid.uuid4().hex[:16].upper()
    body = (
        '<?xml version="1.0" encoding="UTF-8"?>\n'
        "<Error><Code>SlowDown</Code><Message>Please reduce your request rate.</Message>"
        f"<RequestId>{request_id}</RequestId><HostId>faultproxy</HostId></Error>"
    ).encode()
    head = (
        "HTTP/1.1 503 Slow Down\r\n"
        "Content-Type: application/xml\r\n"
        f"Content-Length: {len(body)}\r\n"
        f"x-amz-request-id: {request_id}\r\n"
        "Server: faultproxy\r\n"
        "Connection: close\r\n\r\n"
    ).encode()
    return head if method == "HEAD" else head + body


def _reset(writer: asyncio.StreamWriter) -> None:
    """Close with a TCP RST instead of a FIN."""
    sock = writer.get_extra_info("socket")
    if sock is not None:
        try:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        except OSError:
            pass
    writer.transport.abort()


class FaultProxy:
    """A fault-injecting proxy in front of `upstream` (``http://host:port`` or ``(host, port)``).

    `faults` are the initial `Faults` fields; `seed` fixes every random choice (None: random).
    """

    def __init__(
        self,
        upstream: str | tuple[str, int],
        host: str = "127.0.0.1",
        port: int = 0,
        seed: int | None = 0,
        keep_alive: bool = True,
        **faults: Any,
    ) -> None:
        if isinstance(upstream, str):
            parts = urlsplit(upstream)
            if parts.hostname is None or parts.port is None:
                raise ValueError(f"upstream must look like http://host:port, got {upstream!r}")
            upstream = (parts.hostname, parts.port)
        self.upstream: tuple[str, int] = upstream
        self.host = host
        self.port = port
        self.keep_alive = keep_alive
        self._faults = Faults(**faults)
        self._rng = random.Random(seed)
        self._lock = threading.Lock()
        self._counters: collections.Counter[str] = collections.Counter()
        self._events: collections.deque[Event] = collections.deque(maxlen=100_000)
        self._script: collections.deque[Fault] = collections.deque()
        self._bandwidth_free_at = 0.0
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._server: asyncio.Server | None = None
        self._tasks: set[asyncio.Task[Any]] = set()

    # --- control, from any thread -----------------------------------------------------------

    @property
    def endpoint(self) -> str:
        """The proxy's base URL, to give clients instead of the server's."""
        return f"http://{self.host}:{self.port}"

    @property
    def faults(self) -> Faults:
        """The faults in force."""
        return self._faults

    def set(self, **changes: Any) -> Faults:
        """Change some fault settings from now on, e.g. ``set(error_rate=0.1)``; returns them all."""
        self._faults = dataclasses.replace(self._faults, **changes)
        return self._faults

    def inject(self, *faults: Fault) -> None:
        """Give the next matching requests these faults, in order ("ok" for none); the rates apply
        again after them. ``inject("reset")`` breaks exactly the next request."""
        for fault in faults:
            if fault not in ("ok", "error", "reset", "truncate"):
                raise ValueError(f"unknown fault {fault!r}")
        with self._lock:
            self._script.extend(faults)

    def clear(self) -> Faults:
        """Turn every fault off, scripted ones too."""
        with self._lock:
            self._script.clear()
        self._faults = Faults()
        return self._faults

    @property
    def counters(self) -> dict[str, int]:
        """A snapshot of the counters named in `COUNTER_NAMES`."""
        with self._lock:
            return {name: self._counters[name] for name in COUNTER_NAMES}

    @property
    def events(self) -> list[Event]:
        """The requests seen so far (the last 100 000), each with its fault."""
        with self._lock:
            return list(self._events)

    def reset_counters(self) -> None:
        """Zero the counters and forget the events."""
        with self._lock:
            self._counters.clear()
            self._events.clear()

    def start(self) -> FaultProxy:
        """Start serving in a daemon thread; returns once the port is open."""
        if self._thread is not None:
            return self
        loop = asyncio.new_event_loop()
        opened = threading.Event()
        failure: list[BaseException] = []

        def run() -> None:
            asyncio.set_event_loop(loop)
            try:
                loop.run_until_complete(self._open())
            except BaseException as exc:  # handed to start()
                failure.append(exc)
            opened.set()
            if not failure:
                loop.run_forever()
            loop.close()

        self._loop = loop
        self._thread = threading.Thread(target=run, name=f"faultproxy-{self.upstream[1]}", daemon=True)
        self._thread.start()
        opened.wait()
        if failure:
            self._thread.join()
            self._loop = self._thread = None
            raise failure[0]
        return self

    def stop(self, timeout: float = 10.0) -> None:
        """Close the port and every connection, then end the thread."""
        loop, thread = self._loop, self._thread
        if loop is None or thread is None:
            return
        asyncio.run_coroutine_threadsafe(self._close(), loop).result(timeout)
        loop.call_soon_threadsafe(loop.stop)
        thread.join(timeout)
        self._loop = self._thread = None

    def __enter__(self) -> FaultProxy:
        return self.start()

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()

    def __repr__(self) -> str:
        return f"FaultProxy({self.endpoint} -> {self.upstream[0]}:{self.upstream[1]}, {self._faults})"

    # --- the event loop thread --------------------------------------------------------------

    def _count(self, name: str, n: int = 1) -> None:
        with self._lock:
            self._counters[name] += n

    def _record(self, event: Event) -> None:
        with self._lock:
            self._events.append(event)
            self._counters["requests"] += 1
            if event.fault in _FAULT_COUNTER:
                self._counters[_FAULT_COUNTER[event.fault]] += 1

    async def _open(self) -> None:
        self._server = await asyncio.start_server(self._serve, self.host, self.port, limit=HEAD_LIMIT)
        self.port = self._server.sockets[0].getsockname()[1]

    async def _close(self) -> None:
        if self._server is not None:
            self._server.close()
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        if self._server is not None:
            await self._server.wait_closed()

    async def _throttle(self, n: int) -> None:
        """Wait as long as sending `n` bytes takes under the bandwidth cap."""
        rate = self._faults.bandwidth
        if not rate:
            return
        now = asyncio.get_running_loop().time()
        self._bandwidth_free_at = max(now, self._bandwidth_free_at) + n / rate
        await asyncio.sleep(self._bandwidth_free_at - now)

    def _decide(self, faults: Faults, request: Head) -> tuple[Fault, bool]:
        """The fault for one request, and whether it matches `faults.match` (and so gets latency)."""
        if faults.match is not None and not re.search(faults.match, f"{request.method} {request.target}"):
            return "ok", False
        with self._lock:
            if self._script:
                return self._script.popleft(), True
        draw = self._rng.random()
        choices: tuple[tuple[float, Fault], ...] = (
            (faults.error_rate, "error"),
            (faults.reset_rate, "reset"),
            (faults.truncate_rate, "truncate"),
        )
        for rate, fault in choices:
            if draw < rate:
                return fault, True
            draw -= rate
        return "ok", True

    def _request_cut(self, faults: Faults, request: Head) -> _Cut | None:
        """For a reset that falls in the upload: where the request is cut."""
        kind, length = request.request_framing()
        has_body = kind == "chunked" or length > 0
        phase = faults.reset_phase
        if phase == "response" or (phase == "any" and not (has_body and self._rng.random() < 0.5)):
            return None
        cut = _Cut(self._rng)
        if kind == "chunked":
            cut.after = len(request.raw)
        elif length > 0:
            cut.at = len(request.raw) + self._rng.randrange(length)
        else:
            cut.at = self._rng.randrange(len(request.raw))
        return cut

    def _place_response_cut(self, cut: _Cut, head_size: int, kind: Framing, length: int) -> None:
        """Put a response cut inside the body, or inside the head when there is no body."""
        if kind == "length" and length > 0:
            cut.at = cut.pos + head_size + self._rng.randrange(length)
        elif kind in ("chunked", "eof"):
            cut.after = cut.pos + head_size
        else:
            cut.at = cut.pos + self._rng.randrange(head_size)

    async def _serve(self, client_r: asyncio.StreamReader, client_w: asyncio.StreamWriter) -> None:
        """Handle one client connection: its requests, one after another."""
        task = asyncio.current_task()
        assert task is not None
        self._tasks.add(task)
        self._count("connections")
        upstream = _Upstream(self)
        try:
            while await self._exchange(client_r, client_w, upstream):
                pass
        except (OSError, asyncio.IncompleteReadError, asyncio.LimitOverrunError, ValueError, IndexError):
            pass  # a peer went away or spoke garbage: drop the connection
        except asyncio.CancelledError:
            pass
        finally:
            upstream.close()
            if not client_w.is_closing():
                client_w.transport.abort()
            self._tasks.discard(task)

    async def _exchange(
        self, client_r: asyncio.StreamReader, client_w: asyncio.StreamWriter, upstream: _Upstream
    ) -> bool:
        """Relay one request and its response; False when the client connection is done."""
        request = await read_head(client_r)
        if request is None:
            return False
        faults = self._faults
        fault, matched = self._decide(faults, request)
        self._record(Event(request.method, request.target, fault))
        if matched and (faults.latency or faults.jitter):
            self._count("delayed")
            await asyncio.sleep(max(0.0, faults.latency + self._rng.uniform(-faults.jitter, faults.jitter)))

        req_kind, req_len = request.request_framing()
        expects_continue = request.has_token("expect", "100-continue")
        if fault == "error":
            if not expects_continue:  # else the client sends no body before a 100
                await relay_body(client_r, discard, req_kind, req_len)
            client_w.write(slow_down_response(request.method))
            await client_w.drain()
            client_w.close()
            return False

        up_cut = self._request_cut(faults, request) if fault == "reset" else None
        down_cut = _Cut(self._rng) if fault != "ok" and up_cut is None else None
        up_r, up_w = await upstream.open()
        to_server = _Sink(self, up_w, "bytes_up", up_cut)
        to_client = _Sink(self, client_w, "bytes_down", down_cut)
        try:
            response = await self._forward_request(request, client_r, up_r, to_server, to_client)
            if response is None:
                return False  # the server closed without answering
            resp_kind, resp_len = response.response_framing(request.method)
            server_closes = resp_kind == "eof" or response.has_token("connection", "close")
            client_closes = (
                resp_kind == "eof"
                or request.has_token("connection", "close")
                or (server_closes and not self.keep_alive)
            )
            head = response.raw if client_closes else response.without("connection", "keep-alive")
            if down_cut is not None:
                self._place_response_cut(down_cut, len(head), resp_kind, resp_len)
            await to_client.write(head)
            await relay_body(up_r, to_client.write, resp_kind, resp_len)
            if down_cut is not None:  # the cut fell past the end: cut at the very end
                raise _CutReached
        except _CutReached:
            upstream.close()
            if fault == "reset":
                _reset(client_w)
            else:
                client_w.close()
            return False
        if server_closes:
            upstream.close()
        if client_closes:
            client_w.close()
            return False
        return True

    async def _forward_request(
        self,
        request: Head,
        client_r: asyncio.StreamReader,
        up_r: asyncio.StreamReader,
        to_server: _Sink,
        to_client: _Sink,
    ) -> Head | None:
        """Send `request` and its body to the server, relaying interim (1xx) responses to the
        client; returns the final response's head (None if the server closed first)."""
        await to_server.write(request.raw)
        kind, length = request.request_framing()
        response = await read_head(up_r) if request.has_token("expect", "100-continue") else None
        if response is None or response.status == 100:
            if response is not None:
                await to_client.write(response.raw)
            await relay_body(client_r, to_server.write, kind, length)
            response = await read_head(up_r)
        while response is not None and 100 <= response.status < 200:
            await to_client.write(response.raw)
            response = await read_head(up_r)
        return response


def main(argv: list[str] | None = None) -> None:
    """Run a proxy as its own process until interrupted; prints its endpoint."""
    parser = argparse.ArgumentParser(description="A fault-injecting HTTP/1.1 proxy in front of an S3 server.")
    parser.add_argument("--upstream", required=True, help="http://host:port of the S3 server")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--seed", type=int, default=0)
    for field in dataclasses.fields(Faults):
        text = field.name in ("reset_phase", "match")
        parser.add_argument(f"--{field.name.replace('_', '-')}", type=str if text else float, default=field.default)
    args = vars(parser.parse_args(argv))
    upstream, host, port, seed = args.pop("upstream"), args.pop("host"), args.pop("port"), args.pop("seed")
    with FaultProxy(upstream, host=host, port=port, seed=seed, **args) as proxy:
        print(proxy.endpoint, flush=True)
        try:
            threading.Event().wait()
        except KeyboardInterrupt:
            pass


if __name__ == "__main__":
    main()
