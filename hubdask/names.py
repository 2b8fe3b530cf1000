"""Parse and validate dataset names: ``owner/dataset[:REF]``, ``dataset[:REF]`` or a full URL.

Validation happens before any storage is touched, so a bad name can never create or read anything.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from urllib.parse import urlsplit, urlunsplit

from hubdask.errors import InvalidNameError

_PART = re.compile(r"[A-Za-z0-9._-]+")
_URL = re.compile(r"^([a-zA-Z][a-zA-Z0-9+.-]*)://(.*)$")
MAX_NAME_LENGTH = 255
_USERINFO = re.compile(r"(?P<scheme>[a-zA-Z][a-zA-Z0-9+.-]*://)(?P<userinfo>[^/@\s]*@)")


def safe_url(url: str) -> str:
    """``url`` without ``user:password@`` (an fsspec URL may carry them), so it can be shown anywhere."""
    if "://" not in url:
        return url
    try:
        parts = urlsplit(url)
        if parts.username is None and parts.password is None:
            return url
        host = parts.hostname or ""
        if parts.port:
            host = f"{host}:{parts.port}"
        return urlunsplit((parts.scheme, host, parts.path, parts.query, parts.fragment))
    except ValueError:  # not parseable as a URL (e.g. a bad port): cut the user info out by hand
        return redact(url)


def redact(text: str) -> str:
    """``text`` with the ``user:password@`` of every URL in it removed (for error messages and logs)."""
    return _USERINFO.sub(lambda m: m.group("scheme"), text)


@dataclass(frozen=True)
class Name:
    """A parsed dataset name.

    ``root`` is None for names relative to the default root; for a full URL it is the URL without its
    last path part, and ``path`` is that last part (the dataset).
    """

    path: str
    ref: str | None = None
    root: str | None = None

    @property
    def base(self) -> str:
        """The dataset without its ref, as the user would write it (credentials left out)."""
        if not self.root:
            return self.path
        root = safe_url(self.root)
        return f"{root}{self.path}" if root.endswith("://") else f"{root.rstrip('/')}/{self.path}"

    def with_ref(self, ref: str | None) -> str:
        """``base:ref``: a name that ``parse`` reads back to this dataset at ``ref``."""
        return f"{self.base}:{ref}" if ref else self.base

    def __str__(self) -> str:
        return self.with_ref(self.ref)


def check_part(part: str, what: str, full: str) -> str:
    """Refuse a name part that is empty, ``.``/``..`` or has characters outside ``[A-Za-z0-9._-]``."""
    if not part or part in (".", "..") or not _PART.fullmatch(part):
        raise InvalidNameError(
            f"invalid {what} {part!r} in dataset name {full!r}: expected letters, digits, '.', '_' "
            "or '-', not empty and not '.' or '..'"
        )
    return part


def check_ref(ref: str, full: str) -> str:
    """Refuse a branch, tag or commit name that is not one valid name part."""
    if not _PART.fullmatch(ref) or ref in (".", "..") or len(ref) > MAX_NAME_LENGTH:
        raise InvalidNameError(
            f"invalid ref {ref!r} in dataset name {full!r}: expected a branch, tag or commit id "
            "made of letters, digits, '.', '_' or '-'"
        )
    return ref


def parse(name: str) -> Name:
    """Parse ``name`` or raise InvalidNameError saying what was expected."""
    if not isinstance(name, str):
        raise InvalidNameError(f"dataset name must be a str like 'owner/dataset', got {type(name).__name__}")
    if len(name) > MAX_NAME_LENGTH * 4:
        raise InvalidNameError(f"dataset name is {len(name)} characters long; at most {MAX_NAME_LENGTH * 4}")
    url = _URL.match(name)
    if url:
        scheme, rest = url.groups()
        netloc, slash, tail = rest.partition("/")
        userinfo = ""
        if "@" in netloc:  # user:password@host: kept for opening the root, never shown
            info, _, host = netloc.rpartition("@")
            userinfo, rest = info + "@", host + slash + tail
        shown = f"{scheme}://{rest}"
        if scheme == "memory":  # memory://NAME[/...]: no host, the first part may be the dataset
            host, path = "", rest
        else:  # the host part (bucket, host:port) is never a dataset or a ref
            host, _, path = rest.partition("/")
            host += "/"
        path, ref = _split_ref(path, shown)
        parts = path.rstrip("/").split("/")
        if not parts[-1]:
            raise InvalidNameError(
                f"dataset URL {shown!r} has no dataset part: expected {scheme}://BUCKET/.../DATASET[:REF]"
            )
        dataset = check_part(parts[-1], "dataset", shown)
        root = f"{scheme}://{userinfo}{host}" + "/".join(parts[:-1])
        return Name(dataset, ref, root)
    path, ref = _split_ref(name, name)
    parts = path.split("/")
    if len(parts) > 2:
        raise InvalidNameError(
            f"dataset name {name!r} has {len(parts)} parts: expected 'owner/dataset' or 'dataset' "
            "(use a full URL such as s3://bucket/prefix/dataset for other places)"
        )
    for i, part in enumerate(parts):
        check_part(part, "owner" if i < len(parts) - 1 else "dataset", name)
        if len(part) > MAX_NAME_LENGTH:
            raise InvalidNameError(f"name part {part[:20]!r}... in {name[:60]!r} is longer than {MAX_NAME_LENGTH}")
    return Name("/".join(parts), ref, None)


def _split_ref(text: str, full: str) -> tuple[str, str | None]:
    if text.count(":") > 1:
        raise InvalidNameError(f"dataset name {full!r} has more than one ':' (expected at most one ':REF')")
    if ":" in text:
        path, ref = text.split(":")
        return path, check_ref(ref, full)
    return text, None
