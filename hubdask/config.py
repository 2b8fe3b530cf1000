"""Every setting hubdask reads from the environment, in one place.

========================  =============================================  ====================
variable                  meaning                                        default
========================  =============================================  ====================
HUBDASK_ROOT              where names without a URL live                 ``~/.hubdask``
HUBDASK_CACHE             local chunk cache folder                       ``~/.cache/hubdask``
HUBDASK_CACHE_SIZE        cache bound, bytes or with K/M/G/T suffix      ``10G``
HUBDASK_LOCKS             ``auto``, ``distributed``, ``local``, ``off``  ``auto``
HUBDASK_LOCK_STRIPES      lock stripes that chunk locks hash into        ``4096``
HUBDASK_S3_CLIENT         ``obstore`` (fast) or ``s3fs``                 ``obstore``
HUBDASK_CHUNK_MB          target chunk size for automatic chunking       ``8``
HUBDASK_PROGRESS          ``auto`` (on a terminal), ``on``, ``off``      ``auto``
HUBDASK_THREADS           threads decoding/encoding chunks per process   number of CPUs
HUBDASK_READ_CONCURRENCY  chunk GETs/PUTs in flight per call (remote)    ``32``
HUBDASK_RETRIES           retries of one failed storage request          ``10``
HUBDASK_RETRY_WAIT        first wait before a retry, seconds (doubles)   ``0.1``
HUBDASK_RETRY_MAX_WAIT    longest wait between retries, seconds          ``5``
HUBDASK_RETRY_TIMEOUT     give a request up after this many seconds      ``120``
========================  =============================================  ====================
"""

from __future__ import annotations

import os
from pathlib import Path

_SUFFIX = {"": 1, "K": 2**10, "M": 2**20, "G": 2**30, "T": 2**40}


def root() -> str:
    """The default root: a path or an fsspec URL."""
    return os.environ.get("HUBDASK_ROOT") or str(Path.home() / ".hubdask")


def cache_dir() -> Path:
    return Path(os.environ.get("HUBDASK_CACHE") or Path.home() / ".cache" / "hubdask")


def cache_size() -> int:
    return parse_size(os.environ.get("HUBDASK_CACHE_SIZE", "10G"))


def lock_mode() -> str:
    mode = os.environ.get("HUBDASK_LOCKS", "auto").lower()
    if mode not in ("auto", "distributed", "local", "off"):
        raise ValueError(f"HUBDASK_LOCKS={mode!r}: expected auto, distributed, local or off")
    return mode


def lock_stripes() -> int:
    """How many lock stripes chunk locks hash into (bounds the scheduler's lock state)."""
    return max(1, int(os.environ.get("HUBDASK_LOCK_STRIPES", "4096")))


def s3_client() -> str:
    client = os.environ.get("HUBDASK_S3_CLIENT", "obstore").lower()
    if client not in ("obstore", "s3fs"):
        raise ValueError(f"HUBDASK_S3_CLIENT={client!r}: expected obstore or s3fs")
    return client


def chunk_target_bytes() -> int:
    return int(float(os.environ.get("HUBDASK_CHUNK_MB", "8")) * 2**20)


def shard_target_bytes() -> int:
    """``shards="auto"``: shards of about ``HUBDASK_SHARD_MB`` (default 128 MiB) of uncompressed data."""
    return int(float(os.environ.get("HUBDASK_SHARD_MB", "128")) * 2**20)


def io_threads() -> int:
    return max(1, int(os.environ.get("HUBDASK_THREADS") or os.cpu_count() or 1))


def read_concurrency() -> int:
    return max(1, int(os.environ.get("HUBDASK_READ_CONCURRENCY", "32")))


def progress() -> str:
    return os.environ.get("HUBDASK_PROGRESS", "auto").lower()


def parse_size(text: str) -> int:
    """``'10G'`` -> 10737418240; plain digits are bytes."""
    text = text.strip().upper().removesuffix("B")
    unit = text[-1] if text and text[-1] in _SUFFIX else ""
    try:
        return int(float(text[: len(text) - len(unit)]) * _SUFFIX[unit])
    except ValueError:
        raise ValueError(f"size {text!r}: expected a number of bytes, optionally with K, M, G or T") from None


def retries() -> int:
    """Retries of one storage request after a transient failure (503, reset, truncated body)."""
    return max(0, int(os.environ.get("HUBDASK_RETRIES", "10")))


def retry_wait() -> float:
    return max(0.0, float(os.environ.get("HUBDASK_RETRY_WAIT", "0.1")))


def retry_max_wait() -> float:
    return max(0.0, float(os.environ.get("HUBDASK_RETRY_MAX_WAIT", "5")))


def retry_timeout() -> float:
    return max(0.0, float(os.environ.get("HUBDASK_RETRY_TIMEOUT", "120")))
