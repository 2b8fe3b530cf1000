"""Retries of storage requests after transient failures, with one budget for every client.

The S3 clients retry some failures themselves: obstore retries a request whose status is 5xx or whose
connection failed before the response began, s3fs/botocore retry 5xx, SlowDown and connection errors.
Neither retries everything that the network does to a request (checked against tests' fault proxy):
obstore gives up at once when a GET's body is cut (reset or truncated mid-body; a short body is caught by
its Content-Length, never returned) and never retries a conditional PUT (``mode="create"``) whose
connection broke. This module closes those gaps for remote roots:

- ``call`` retries one request while its error is transient, waiting ``HUBDASK_RETRY_WAIT`` seconds,
  doubling up to ``HUBDASK_RETRY_MAX_WAIT`` (with jitter), at most ``HUBDASK_RETRIES`` times and not past
  ``HUBDASK_RETRY_TIMEOUT`` seconds; an error the client already retried to its budget is not retried
  again. Past the budget the caller gets a ``StorageError`` naming what failed (no secret: clients'
  messages carry URLs, never keys, and only their first line is kept).
- ``retrying(op)`` wraps a ``Root`` primitive with ``call`` (local and memory roots are not wrapped).
  For ``create`` it also makes a retried exclusive create idempotent: when a first attempt landed but its
  answer was lost, the retry finds the object already there; if it holds exactly our bytes it is ours.
- Every attempt of ``call`` is bounded by what is left of ``HUBDASK_RETRY_TIMEOUT`` (``asyncio.timeout``),
  whatever the client: an endpoint that accepts connections and never answers fails after the budget,
  not after a client's own default (obstore's 120 s, botocore's 60 s per read); the clients are also given
  the budget as their own timeouts (``Policy.client_timeout``).
- Two answers are final and get their own message, because retrying them only delays the user: a bucket
  that does not exist (``NotFoundError`` naming the bucket and the root) and missing S3 credentials
  (``StorageError`` saying where credentials were looked for and how to set them).
- ``Policy.obstore_config`` gives obstore the same numbers (it retries 5xx itself, cheaply, before the
  body is read); with s3fs, botocore and s3fs make one attempt each and ``call`` does all the retrying.
"""

from __future__ import annotations

import asyncio
import functools
import random
import re
import time
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass
from datetime import timedelta
from typing import Any, TypeVar

from hubdask import config
from hubdask.errors import HubdaskError, NotFoundError, StorageError

T = TypeVar("T")

# Errors that are answers, not failures: retrying cannot change them.
_FINAL = (FileNotFoundError, FileExistsError, PermissionError, IsADirectoryError, NotADirectoryError,
          HubdaskError, ValueError, TypeError, KeyError)
_FINAL_NAMES = {"NotFoundError", "AlreadyExistsError", "PreconditionError", "PermissionDeniedError",
                "UnauthenticatedError", "NotSupportedError", "NotImplementedError", "InvalidPathError",
                "UnknownConfigurationKeyError", "NoCredentialsError", "PartialCredentialsError"}
_TRANSIENT_NAMES = {"ClientPayloadError", "ServerDisconnectedError", "ClientConnectionError",
                    "ClientOSError", "ServerTimeoutError", "EndpointConnectionError", "ConnectionClosedError",
                    "ReadTimeoutError", "ConnectTimeoutError", "ResponseStreamingError", "IncompleteReadError"}
_TRANSIENT_TEXT = re.compile(
    r"HTTP error|body error|error sending request|connection (reset|closed|refused|aborted)|broken pipe|"
    r"timed? ?out|\b50[0234]\b|SlowDown|reduce your request rate|Service ?Unavailable|Internal ?Server ?Error|"
    r"InternalError|payload is not completed|end of file before message length|incomplete", re.I)
_NO_BUCKET = re.compile(r"NoSuchBucket|specified bucket does not exist", re.I)
_BUCKET_NAME = re.compile(r"<BucketName>([^<]+)</BucketName>")
_NO_CREDENTIALS = re.compile(r"169\.254\.169\.254|/latest/api/token|/latest/meta-data/iam|Unable to locate credentials|NoCredentialsError|"
                             r"Partial credentials|no credentials|credentials? (were|was) not found", re.I)
CREDENTIALS_HELP = (
    "looked for storage_options key/secret, AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY, AWS_PROFILE or "
    "~/.aws/credentials and ~/.aws/config, web-identity and container credentials, then the EC2 instance "
    "metadata service; set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY (or AWS_PROFILE), or pass "
    "storage_options={'anon': True} for a public bucket")
_CLIENT_EXHAUSTED = re.compile(r"after (\d+) retries, max_retries: (\d+)|reached max retries: (\d+)()")


@dataclass(frozen=True)
class Policy:
    """How long to keep trying one request (from ``HUBDASK_RETRIES`` and friends, see config.py)."""

    retries: int = 10
    wait: float = 0.1
    max_wait: float = 5.0
    timeout: float = 120.0

    @classmethod
    def from_env(cls) -> "Policy":
        return cls(config.retries(), config.retry_wait(), config.retry_max_wait(), config.retry_timeout())

    def waits(self) -> Iterator[float]:
        """The waits before each retry: exponential, capped, with jitter (half to full length)."""
        wait = self.wait
        for _ in range(self.retries):
            yield wait * random.uniform(0.5, 1.0)
            wait = min(wait * 2, self.max_wait)

    def client_timeout(self) -> float | None:
        """Seconds a client may spend on one request (None: unbounded, ``HUBDASK_RETRY_TIMEOUT=0``)."""
        return self.timeout if self.timeout > 0 else None

    def obstore_config(self) -> dict[str, Any]:
        """obstore's ``retry_config`` with the same budget."""
        return {"max_retries": self.retries, "retry_timeout": timedelta(seconds=self.timeout),
                "backoff": {"init_backoff": timedelta(seconds=self.wait),
                            "max_backoff": timedelta(seconds=max(self.wait, self.max_wait)), "base": 2}}

    def botocore_config(self) -> dict[str, Any]:
        """s3fs's ``config_kwargs``: botocore makes one attempt, ``call`` does the retrying (botocore's
        own backoff waits up to 20 s and would not follow ``HUBDASK_RETRY_WAIT``)."""
        out: dict[str, Any] = {"retries": {"total_max_attempts": 1, "mode": "standard"}}
        if self.client_timeout() is not None:
            out.update(connect_timeout=min(self.timeout, 10.0), read_timeout=self.timeout)
        return out


def is_transient(exc: BaseException) -> bool:
    """Whether ``exc`` is a failure of the transport or of an overloaded server, worth another try."""
    if isinstance(exc, _FINAL):
        return False
    names = {c.__name__ for c in type(exc).__mro__}
    if names & _FINAL_NAMES:
        return False
    if names & _TRANSIENT_NAMES or isinstance(exc, (ConnectionError, TimeoutError, asyncio.TimeoutError)):
        return True
    if any(c.__module__.split(".")[0] == "aiohttp" for c in type(exc).__mro__):
        return True
    return bool(_TRANSIENT_TEXT.search(str(exc)))


def client_exhausted(exc: BaseException) -> bool:
    """Whether the client itself already retried ``exc`` up to its own budget (obstore and botocore
    say so in their messages)."""
    m = _CLIENT_EXHAUSTED.search(str(exc))
    if m is None:
        return False
    return m.group(3) is not None or int(m.group(1)) >= int(m.group(2))


def summary(exc: BaseException) -> str:
    """One short line about ``exc`` (clients append long debug dumps; they are left out)."""
    from hubdask.names import redact

    first = (str(exc).strip().splitlines() or [""])[0]
    return f"{type(exc).__name__}: {redact(first)[:300]}"


def final_error(exc: BaseException, what: str, root: str | None = None) -> HubdaskError | None:
    """The hubdask error for an answer that no retry changes (a missing bucket, no credentials), or None."""
    text = f"{type(exc).__name__}: {exc}"
    if _NO_BUCKET.search(text):
        named = _BUCKET_NAME.search(text)
        bucket = named.group(1) if named else (root.split("://", 1)[1].split("/", 1)[0] if root and "://" in root
                                              else None)
        err = NotFoundError(f"{what}: the bucket {bucket or ''}{' ' if bucket else ''}does not exist"
                            f"{f' (root {root})' if root else ''}; expected an existing bucket: create it first"
                            f"{f' (e.g. aws s3 mb s3://{bucket})' if bucket else ''}")
        err.missing_bucket = bucket or True  # api adds the root when it was not known here
        return err
    if _NO_CREDENTIALS.search(text):
        return StorageError(f"{what}: no S3 credentials found: {CREDENTIALS_HELP}")
    return None


async def call(fn: Callable[[], Awaitable[T]], what: str, policy: Policy | None = None,
               root: str | None = None) -> T:
    """``await fn()``, retried while it fails transiently, each attempt bounded by what is left of the
    budget; StorageError naming ``what`` past it (``root``: the root URL, for messages)."""
    policy = policy or Policy.from_env()
    start = time.monotonic()
    waits = policy.waits()
    attempt = 0
    bounded = policy.timeout > 0
    while True:
        attempt += 1
        try:
            if not bounded:
                return await fn()
            deadline = asyncio.timeout(max(policy.timeout - (time.monotonic() - start), 0.001))
            try:
                async with deadline:
                    return await fn()
            except TimeoutError:
                if not deadline.expired():
                    raise  # the client's own timeout: judged below like any failure
                elapsed = time.monotonic() - start
                raise StorageError(
                    f"{what}: storage did not answer within HUBDASK_RETRY_TIMEOUT={policy.timeout:g}s "
                    f"({attempt} attempt(s) over {elapsed:.1f}s); expected an answer within the retry budget: "
                    "check the endpoint, or raise HUBDASK_RETRY_TIMEOUT") from None
        except StorageError:
            raise
        except Exception as exc:
            final = final_error(exc, what, root)
            if final is not None:
                raise final from None
            if not is_transient(exc):
                raise
            wait = None if client_exhausted(exc) else next(waits, None)
            elapsed = time.monotonic() - start
            if wait is None or elapsed + wait > policy.timeout:
                raise StorageError(
                    f"{what}: storage kept failing after {attempt} attempt(s) over {elapsed:.1f}s "
                    f"({summary(exc)}); expected an answer within the retry budget (HUBDASK_RETRIES="
                    f"{policy.retries}, HUBDASK_RETRY_TIMEOUT={policy.timeout:g}s): try again later"
                ) from exc
        await asyncio.sleep(wait)


def retrying(op: str) -> Callable:
    """Decorate an async ``Root`` primitive ``(self, key, *args)`` with ``call`` on remote roots."""

    def deco(method: Callable[..., Awaitable[Any]]) -> Callable[..., Awaitable[Any]]:
        @functools.wraps(method)
        async def wrapper(self: Any, key: str, *args: Any) -> Any:
            if not self.is_remote:
                return await method(self, key, *args)
            out = await call(lambda: method(self, key, *args), f"storage {self.url}: {op} {key!r}", root=self.url)
            if op == "create" and out is False:
                # The object exists. If it holds our very bytes, an earlier attempt of ours (inside the
                # client's retries or ours) wrote it and only the answer was lost: the create is ours.
                # Sound only because a record's bytes are its writer's alone (claims name a fresh node,
                # tombstones a fresh id, marks the writer, metadata versions their change:
                # grow.CHANGE_FIELD), or, for chunk
                # versions, equal bytes from two writers are one outcome (either order gives them).
                return await self.get_async(key) == bytes(args[0])
            return out

        return wrapper

    return deco
