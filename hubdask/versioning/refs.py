"""Branch heads and tags, moved atomically with nothing but exclusive create.

A branch is a sequence of heads numbered SEQ; the head is the highest SEQ named in the branch's folder
``refs/heads/BRANCH/``. Moving a branch means claiming SEQ+1: creating ``refs/log/BRANCH/SEQ`` (its
record: the open node, where uncommitted writes go, and the base commit), which exactly one writer can
do, on every backend that supports exclusive create (local link, memory, S3 If-None-Match); the winner
then names it in the folder. Claims are kept (a few bytes per commit, never listed to resolve a branch),
so a creator however late can never win a number twice. A tag is one record ``refs/tags/TAG``.

Empty objects in the branch's folder let one LIST answer a read, with no GET (on S3 each request is a
round trip that no cache may save, since refs move):
- ``SEQ.NODE.BASE``, the name of head SEQ, put by its winner right after the claim, which in the same
  round trip deletes the names older than SEQ-1 (and their marks): a branch's folder holds a handful of
  objects however long its history, so resolving it is one short LIST at 10,000 commits as at 1. A
  winner that died before naming its head leaves the branch at SEQ-1 (its node sealed): the next
  committer or writer loses the claim of SEQ, sees the branch still at SEQ-1 and names SEQ;
- ``written-NODE``, created (exclusively, holding its WRITER id: random per process) by the first writer
  process of open node NODE with its first write there, and ``written-NODE.many``, put by every other
  writer process with its first write (the write returns only once its mark has landed): without
  either, the node holds no returned write, and readers take every chunk from the base commit (and its
  disk cache); with only the committing process's own, a commit knows the node's content without
  listing it, from two GETs of fixed names (a LIST costs more, and on some servers grows with the bucket).
A crash before a mark leaves the safe answer (look in the node). Datasets made before claims have head
records ``SEQ`` in the folder itself; they are read (GET) where no name says more. Temp files of an
interrupted create (``*.partial``) are never read as records.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass

from hubdask.errors import CorruptionError
from hubdask.storage import Root
from hubdask.versioning import layout
from hubdask.versioning.layout import head_prefix, tag_key

SEQ_DIGITS = 12
KEEP = 2  # head records kept: the newest and the one before it


@dataclass(frozen=True)
class Head:
    """One head record: the branch's open node and the commit it started from (None before any)."""

    branch: str
    seq: int
    node: str
    base: str | None
    written: bool = True  # the open node may hold writes (False: the listing proved it empty)
    listing: "_Listing | None" = dataclasses.field(default=None, compare=False, repr=False)  # what it was read from


def written_key(ds: str, branch: str, node: str, many: bool = False) -> str:
    """The written mark of ``node``, the open node of ``branch``: the first writer's (``many=False``,
    holding its id) or the one every later writer puts (``many=True``)."""
    return f"{head_prefix(ds, branch)}written-{node}{'.many' if many else ''}"


def _marked_node(name: str) -> str | None:
    return name[len("written-"):].split(".")[0] if name.startswith("written-") else None


async def mark_written(root: Root, ds: str, branch: str, node: str, writer: str) -> None:
    """Mark ``node`` as written by process ``writer``: create the first writer's mark, or, if it exists
    (another writer's, or our own whose reply was lost: taken as another's, which only costs a commit a
    LIST), put the mark of many writers."""
    from hubdask.storage import retry

    key = written_key(ds, branch, node)
    create = lambda: root.create_async(key, writer.encode())  # noqa: E731
    first = await (create() if not root.is_remote
                   else retry.call(create, f"dataset {ds!r}: create {key!r}"))
    if not first:
        await root.put_async(written_key(ds, branch, node, many=True), b"")


def only_writer(root: Root, ds: str, branch: str, node: str, writer: str) -> bool:
    """Whether no process but ``writer`` has marked ``node`` (two concurrent GETs of fixed names). A
    mark of an upgraded dataset names no writer and counts as another's."""
    import asyncio

    from hubdask.storage import sync

    async def run() -> tuple[bytes | None, bytes | None]:
        return tuple(await asyncio.gather(root.get_async(written_key(ds, branch, node)),
                                          root.get_async(written_key(ds, branch, node, many=True))))

    first, many = sync(run())
    return many is None and first in (None, writer.encode())


def record_key(ds: str, branch: str, seq: int) -> str:
    """Where head ``seq`` was recorded before claims (still read: datasets made before them)."""
    return f"{head_prefix(ds, branch)}{seq:0{SEQ_DIGITS}d}"


def claim_key(ds: str, branch: str, seq: int) -> str:
    """The claim of head ``seq``: created exclusively by the one writer that moves the branch there."""
    return f"{layout.head_log_prefix(ds, branch)}{seq:0{SEQ_DIGITS}d}"


def _pointer_key(ds: str, branch: str, seq: int, node: str, base: str | None) -> str:
    return f"{record_key(ds, branch, seq)}.{node}.{base or '-'}"


@dataclass
class _Listing:
    """What one LIST of a branch's folder says."""

    seqs: list[int]
    pointers: dict[int, list[tuple[str, str | None]]]
    marked: set[str]
    keys: list[str]


def _list(root: Root, ds: str, branch: str) -> _Listing:
    return _parse_listing(ds, branch, root.list_prefix(head_prefix(ds, branch)))


def _parse_listing(ds: str, branch: str, listed: list[str]) -> _Listing:
    prefix = head_prefix(ds, branch)
    keys = [k for k in listed if not layout.is_temp(k) and "/" not in k[len(prefix):]]
    names = [k[len(prefix):] for k in keys]
    pointers: dict[int, list[tuple[str, str | None]]] = {}
    for n in names:
        parts = n.split(".")
        if len(parts) == 3 and parts[0].isdigit():
            pointers.setdefault(int(parts[0]), []).append((parts[1], None if parts[2] == "-" else parts[2]))
    return _Listing(sorted({int(n) for n in names if n.isdigit()} | set(pointers)), pointers,
                    {_marked_node(n) for n in names if n.startswith("written-")}, keys)


def read_head(root: Root, ds: str, branch: str) -> Head | None:
    """The current head of ``branch``, or None if there is no such branch: one LIST (plus a GET of the
    record when its name copy is missing or ambiguous)."""
    listing = _list(root, ds, branch)
    for seq in reversed(listing.seqs):  # a half-deleted branch may lack its newest record: take the newest readable
        named = listing.pointers.get(seq, [])
        head = Head(branch, seq, *named[0]) if len(named) == 1 else read_head_at(root, ds, branch, seq)
        if head is not None:
            return dataclasses.replace(head, written=head.node in listing.marked, listing=listing)
    return None


def read_head_at(root: Root, ds: str, branch: str, seq: int) -> Head | None:
    """Head record number ``seq`` of ``branch`` (None if it does not exist)."""
    for key in (claim_key(ds, branch, seq), record_key(ds, branch, seq)):  # a claim, or a legacy record
        raw = root.get(key)
        if raw is not None:
            rec = parse_record(raw, ds, key, ("node", "base"))
            return Head(branch, seq, rec["node"], rec["base"])
    return None


def parse_record(raw: bytes, ds: str, key: str, fields: tuple[str, ...]) -> dict:
    """A JSON record with ``fields``, or CorruptionError naming the dataset and the object."""
    try:
        rec = json.loads(raw)
        if not isinstance(rec, dict) or any(f not in rec for f in fields):
            raise ValueError(f"expected an object with {', '.join(fields)}")
        return rec
    except (ValueError, UnicodeDecodeError) as exc:
        raise CorruptionError(f"dataset {ds!r}: the record {key!r} is damaged ({exc}); expected a JSON record "
                              f"with {', '.join(fields)}") from None


def write_head(root: Root, ds: str, branch: str, seq: int, node: str, base: str | None,
               prior: _Listing | None = None) -> Head | None:
    """Claim head ``seq`` (open node ``node`` on commit ``base``), then name it in the branch's folder;
    the new head, or None if another writer claimed it first (the branch moved). A claim is never
    deleted with the branch standing, so a creator however late can never win a number twice.

    ``prior``: the listing head ``seq - 1`` was read from, pruned in the round trip that names the new
    head (without it the folder is listed first); the new head carries what the folder then holds, as
    far as this process knows. A loser that finds the branch still behind the claim names the winner's
    head (``name_claim``: its creator died between the claim and the name)."""
    # head 0 is recorded in the folder itself, where listing finds it even if its creator died before
    # naming it (a half-made branch or dataset is then seen, and finished or cleared); being never moved
    # to, it needs no claim that outlives the pruning of its record
    claim = claim_key(ds, branch, seq) if seq else record_key(ds, branch, 0)
    if not root.create(claim, json.dumps({"node": node, "base": base}).encode()):
        return None
    listing = prior if prior is not None else _list(root, ds, branch)
    left = _prune(root, ds, branch, seq, node, listing, also_put=_pointer_key(ds, branch, seq, node, base))
    return Head(branch, seq, node, base, written=False, listing=_parse_listing(ds, branch, left))


def name_claim(root: Root, ds: str, branch: str, seq: int) -> bool:
    """Name the claimed head ``seq`` in the branch's folder (for a winner that died before naming it);
    False if there is no such claim."""
    key = claim_key(ds, branch, seq)
    raw = root.get(key)
    if raw is None:
        return False
    rec = parse_record(raw, ds, key, ("node", "base"))
    name_head(root, ds, branch, seq, rec["node"], rec["base"])
    return True


def _prune(root: Root, ds: str, branch: str, seq: int, node: str, listing: _Listing, also_put: str) -> list[str]:
    """Create the name copy ``also_put`` of the new head and, in the same round trip, delete the names
    (and legacy records) older than the last ``KEEP`` heads, and written marks of nodes that no kept head
    names, listed or not (their names are fixed); best effort: a failure leaves a longer listing,
    nothing worse. Returns the keys of ``listing`` left, with ``also_put``."""
    cut = seq - KEEP + 1
    kept_nodes = {node} | {n for s, named in listing.pointers.items() if s >= cut for n, _ in named}
    prefix = head_prefix(ds, branch)
    gone = []
    for k in listing.keys:
        name = k[len(prefix):]
        head = name.split(".")[0]
        if head.isdigit() and int(head) < cut:
            gone.append(k)
        elif name.startswith("written-") and _marked_node(name) not in kept_nodes:
            gone.append(k)
    dropped = {n for s, named in listing.pointers.items() if s < cut for n, _ in named} - kept_nodes
    gone = sorted(set(gone) | {written_key(ds, branch, n, many) for n in dropped for many in (False, True)})
    import asyncio

    from hubdask.storage import sync

    async def run() -> None:
        done = await asyncio.gather(root.put_async(also_put, b""), *(root.delete_async(k) for k in gone),
                                    return_exceptions=True)
        if isinstance(done[0], BaseException):
            raise done[0]  # the name copy matters (readers find the head by it); deletes may fail

    sync(run())
    return [k for k in listing.keys if k not in set(gone)] + [also_put]


def start_branch(root: Root, ds: str, branch: str, node: str, base: str | None) -> bool:
    """Create ``branch``'s first head record (open node ``node`` on commit ``base``); False if the branch
    exists. A create whose response was lost but that landed counts as ours (the record names ``node``)."""
    if write_head(root, ds, branch, 0, node, base) is not None:
        return True
    head = read_head(root, ds, branch)
    if head is None or head.node != node:
        return False
    name_head(root, ds, branch, 0, node, base)
    return True


def name_head(root: Root, ds: str, branch: str, seq: int, node: str, base: str | None) -> None:
    """Create the name copy of head record ``seq`` (idempotent; its creator calls it after winning)."""
    root.put(_pointer_key(ds, branch, seq, node, base), b"")


def list_branches(root: Root, ds: str) -> list[str]:
    """Branches with at least one named head (one LIST; empty folders of deleted branches don't count)."""
    prefix = layout.heads_prefix(ds)
    found = (k[len(prefix):].split("/") for k in root.list_prefix(prefix) if not layout.is_temp(k))
    return sorted({parts[0] for parts in found if len(parts) == 2 and parts[1].split(".")[0].isdigit()})


def list_tags(root: Root, ds: str) -> dict[str, str]:
    """Tag name -> commit id."""
    out = {}
    for name in root.list_dir(layout.tags_prefix(ds)):
        name = name.rstrip("/")
        if layout.is_temp(name):
            continue
        commit = read_tag(root, ds, name)
        if commit is not None:
            out[name] = commit
    return dict(sorted(out.items()))


def read_tag(root: Root, ds: str, tag: str) -> str | None:
    key = tag_key(ds, tag)
    raw = root.get(key)
    return None if raw is None else parse_record(raw, ds, key, ("commit",))["commit"]


def write_tag(root: Root, ds: str, tag: str, commit: str) -> bool:
    return root.create(tag_key(ds, tag), json.dumps({"commit": commit}).encode())
