"""Parse and validate dataset names: ``owner/dataset[:REF]``, ``dataset[:REF]`` or a full URL.

Validation happens before any storage is touched, so a bad name can never create or read anything.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from hubdask.errors import InvalidNameError

_PART = re.compile(r"[A-Za-z0-9._-]+")
_URL = re.compile(r"^([a-zA-Z][a-zA-Z0-9+.-]*)://(.*)$")
MAX_NAME_LENGTH = 255


@dataclass(frozen=True)
class Name:
    """A parsed dataset name.

    ``root`` is None for names relative to the default root; for a full URL it is the URL without its
    last path part, and ``path`` is that last part (the dataset).
    """

    path: str
    ref: str | None = None
    root: str | None = None

    def __str__(self) -> str:
        base = f"{self.root.rstrip('/')}/{self.path}" if self.root else self.path
        return f"{base}:{self.ref}" if self.ref else base


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
        host, slash, tail = rest.partition("/")
        if slash and ":" in host:  # a port (https://host:8080/owner/ds:REF): the ref is in the path only
            path, ref = _split_ref(tail, name)
            path = f"{host}/{path}"
        else:
            path, ref = _split_ref(rest, name)
        parts = path.rstrip("/").split("/")
        if len(parts) < 2 and scheme != "memory":
            raise InvalidNameError(
                f"dataset URL {name!r} has no dataset part: expected {scheme}://BUCKET/.../DATASET[:REF]"
            )
        dataset = check_part(parts[-1], "dataset", name)
        root = f"{scheme}://" + "/".join(parts[:-1])
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
