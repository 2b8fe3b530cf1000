"""Just enough HTTP/1.1 framing (RFC 9112) to relay messages one by one over keep-alive streams."""

from __future__ import annotations

import asyncio
from typing import Awaitable, Callable, Literal

Framing = Literal["none", "length", "chunked", "eof"]
Write = Callable[[bytes], Awaitable[None]]

PIECE = 64 * 1024
"""Largest piece read and written at a time."""
HEAD_LIMIT = 1 << 20
"""Longest message head accepted (a StreamReader `limit`)."""


class Head:
    """The start line and headers of one HTTP/1.1 message, with its raw bytes."""

    def __init__(self, raw: bytes) -> None:
        self.raw = raw
        lines = raw.decode("latin-1").split("\r\n")
        self.start = lines[0]
        self.headers: list[tuple[str, str]] = []
        for line in lines[1:]:
            if line:
                name, _, value = line.partition(":")
                self.headers.append((name.strip().lower(), value.strip()))

    @property
    def method(self) -> str:
        """The method of a request."""
        return self.start.split(" ", 2)[0]

    @property
    def target(self) -> str:
        """The target (path and query) of a request."""
        return self.start.split(" ", 2)[1]

    @property
    def status(self) -> int:
        """The status code of a response."""
        return int(self.start.split(" ", 2)[1])

    def get(self, name: str) -> str | None:
        """The value of header `name` (lower case), or None."""
        for key, value in self.headers:
            if key == name:
                return value
        return None

    def has_token(self, name: str, token: str) -> bool:
        """True when header `name` (lower case) lists `token` (lower case)."""
        value = self.get(name)
        return value is not None and token in (t.strip().lower() for t in value.split(","))

    def without(self, *names: str) -> bytes:
        """The raw head with the headers `names` (lower case) left out."""
        lines = self.raw.split(b"\r\n")
        kept = [line for line in lines[1:] if line.partition(b":")[0].strip().lower().decode("latin-1") not in names]
        return b"\r\n".join([lines[0], *kept])

    def request_framing(self) -> tuple[Framing, int]:
        """How a request body is delimited, and its length when known."""
        if self.has_token("transfer-encoding", "chunked"):
            return "chunked", 0
        length = self.get("content-length")
        return ("length", int(length)) if length is not None else ("none", 0)

    def response_framing(self, method: str) -> tuple[Framing, int]:
        """How this response's body is delimited, given the request's `method`."""
        if method == "HEAD" or 100 <= self.status < 200 or self.status in (204, 304):
            return "none", 0
        kind, length = self.request_framing()
        return ("eof", 0) if kind == "none" else (kind, length)


async def read_head(reader: asyncio.StreamReader) -> Head | None:
    """The next message head, or None when the stream ends cleanly before one."""
    try:
        raw = await reader.readuntil(b"\r\n\r\n")
    except asyncio.IncompleteReadError as exc:
        if exc.partial.strip():
            raise
        return None
    return Head(raw)


async def discard(data: bytes) -> None:
    """A `Write` that drops the data."""


async def relay_body(reader: asyncio.StreamReader, write: Write, kind: Framing, length: int) -> None:
    """Copy one message body, as framed, from `reader` to `write`."""
    if kind == "length":
        await relay_exact(reader, write, length)
    elif kind == "chunked":
        while True:
            line = await reader.readuntil(b"\r\n")
            await write(line)
            size = int(line.split(b";", 1)[0].strip(), 16)
            if size == 0:
                break
            await relay_exact(reader, write, size + 2)  # the data and its CRLF
        while True:  # trailers, up to the empty line
            line = await reader.readuntil(b"\r\n")
            await write(line)
            if line == b"\r\n":
                return
    elif kind == "eof":
        while data := await reader.read(PIECE):
            await write(data)


async def relay_exact(reader: asyncio.StreamReader, write: Write, length: int) -> None:
    """Copy exactly `length` bytes (IncompleteReadError if the stream ends first)."""
    while length > 0:
        data = await reader.read(min(PIECE, length))
        if not data:
            raise asyncio.IncompleteReadError(b"", length)
        length -= len(data)
        await write(data)
