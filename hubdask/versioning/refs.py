"""Branch heads and tags, moved atomically with nothing but exclusive create.

A branch is a sequence of heads numbered SEQ; the head is the highest SEQ named in the branch's folder
``refs/heads/BRANCH/``. Moving a branch means claiming SEQ+1: creating ``refs/log/BRANCH/SEQ`` (its
record: the open node, where uncommitted writes go, and the base commit), which exactly one writer can
do, on every backend that supports exclusive create (local link, memory, S3 If-None-Match); the winner
then names it in the folder. A tag is one record ``refs/tags/TAG``.

The claim log is trimmed window by window, so the claims it holds are bounded however long the
history: the winner of head ``(W+1) * TRIM_EVERY + CLAIMS_KEPT`` creates the floor record
``refs/log/BRANCH/floor-W`` and only then deletes window W's claims (heads ``W * TRIM_EVERY`` up to the
next window's). A claim is accepted only if, once it was created, its window has no floor record: a
stale claimer (one that read the head and stalled past its lease while the branch moved on and was
trimmed) can re-create a trimmed number, but the floor record that preceded the deletion is there by
then, so it loses and removes its claim (and the name it put meanwhile: older than the branch's newest,
it is never taken for the head). Checking costs one GET of a fixed name (a LIST would grow with the
bucket on some servers), in the round trip that names the head; a floor record is an empty object, one
per ``TRIM_EVERY`` heads, never listed.

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
  listing it, from two GETs of fixed names (a LIST costs more, and on some servers grows with the bucket);
- ``meta-NODE``, put (before the new metadata) by every resize or append of an array in open node NODE:
  the shape is versioned state, and a head whose listing shows the mark tells readers that the node's
  metadata, not the base commit's, is the array's (without it the cached metadata of the base commit is
  current). Pruned with the node's written marks.
The branch's names are only ever added or deleted, never renamed: a LIST taken at any instant of a
claim or a prune shows the new head's name, or the one before it (kept: KEEP), so a standing branch
always resolves.
A crash before a mark leaves the safe answer (look in the node). Datasets made before claims have head
records ``SEQ`` in the folder itself; they are read (GET) where no name says more. Temp files of an
interrupted create (``*.partial``) are never read as records.

A branch name keeps one sequence of heads for ever, across deletions. Deleting a branch claims the next
head as a tombstone (``SEQ.deleted.-``, its claim saying who deleted it: the branch, or the whole
dataset), after sealing the open node as deleted; creating the branch again claims the number after
the tombstone (only a name never used starts at head 0). So the claim log and its floors are never
deleted, a committer stalled before its claim meets a taken number (the tombstone's, or a later
one's) or a floor, and a late head record or claim of a deleted incarnation is older than the
tombstone, which readers take as the branch's newest head: the branch stays deleted, or resolves to
its new incarnation. A deleted dataset keeps these records (and its seals) for the same reason.
"""

from __future__ import annotations

import dataclasses
import json
import os
import threading
from collections import OrderedDict
from dataclasses import dataclass

from hubdask.errors import CorruptionError
from hubdask.storage import Root
from hubdask.versioning import layout
from hubdask.versioning.layout import head_prefix, tag_key

SEQ_DIGITS = 12
KEEP = 2  # head records kept: the newest and the one before it
# LISTs of a folder that show no head before the claims are asked (_from_claims). A listing is no
# snapshot: POSIX readdir may skip entries created or deleted while it runs (ext4 walks its hash order),
# and S3 documents no snapshot across a LIST either, so a LIST overlapping two commits' naming and
# pruning can miss both standing names; it was seen once in thousands (hundreds of marks churning beside
# the names); the next LIST had them. Claims are only ever added at the top, so they settle it. Costs
# nothing for a branch that exists; a missing branch costs LIST_TRIES LISTs.
LIST_TRIES = 3
TRIM_EVERY = 64  # every TRIM_EVERY-th head trims the claim log
CLAIMS_KEPT = 16  # claims kept below the trimming head (readers need the newest one or two)
DELETED = "deleted"  # the node of a tombstone head (node ids are hex)


@dataclass(frozen=True)
class Head:
    """One head record: the branch's open node and the commit it started from (None before any)."""

    branch: str
    seq: int
    node: str
    base: str | None
    written: bool = True  # the open node may hold writes (False: the listing proved it empty)
    meta: bool = False  # the open node may hold new metadata (a resize or append: its meta mark was listed)
    shared: bool = True  # another writer process may have written the node (False: no many-writers mark listed)
    listing: "_Listing | None" = dataclasses.field(default=None, compare=False, repr=False)  # what it was read from

    @property
    def deleted(self) -> bool:
        """A tombstone: the branch was deleted at this head."""
        return self.node == DELETED


def written_key(ds: str, branch: str, node: str, many: bool = False) -> str:
    """The written mark of ``node``, the open node of ``branch``: the first writer's (``many=False``,
    holding its id) or the one every later writer puts (``many=True``)."""
    return f"{head_prefix(ds, branch)}written-{node}{'.many' if many else ''}"


def meta_key(ds: str, branch: str, node: str) -> str:
    """The meta mark of ``node``, the open node of ``branch``: its arrays' metadata (shape) changed there."""
    return f"{head_prefix(ds, branch)}meta-{node}"


async def mark_meta(root: Root, ds: str, branch: str, node: str) -> None:
    """Put the meta mark of ``node`` before the metadata it announces; once per process and node (a mark
    that landed stays while the node is open: only marks of nodes past the kept heads are pruned)."""
    if (root.token, ds, node) in _META_LANDED:
        return
    key = meta_key(ds, branch, node)
    _put_here(root, ds, node, key)
    await root.put_async(key, b"")
    if len(_META_LANDED) > _PUT_MAX:
        _META_LANDED.clear()  # a mark put again costs one request, nothing worse
    _META_LANDED.add((root.token, ds, node))


# (root token, dataset, node) -> the marks this process put beside that node's head (drop_marks)
_PUT: "OrderedDict[tuple[str, str, str], set[str]]" = OrderedDict()
_PUT_MAX = 4096
_PUT_LOCK = threading.Lock()
_META_LANDED: set[tuple[str, str, str]] = set()  # (root token, dataset, node) whose meta mark this process put


def _put_here(root: Root, ds: str, node: str, key: str) -> None:
    with _PUT_LOCK:
        _PUT.setdefault((root.token, ds, node), set()).add(key)
        while len(_PUT) > _PUT_MAX:
            _PUT.popitem(last=False)


def drop_marks(root: Root, ds: str, node: str) -> None:
    """Delete the marks this process put (or tried to) beside sealed ``node``'s head; call it once a head past that
    node is named (seen in a listing). From then on nobody needs them: readers resolve the newer head,
    whose base commit holds the node, and every committer of the node finds its commit record. A mark
    that landed after the prune of the node's head (a write that then found the node sealed) would
    otherwise stay in the folder for good, since a committer prunes marks it listed or of heads it
    knows. Best effort: a failure leaves one object behind, nothing worse."""
    with _PUT_LOCK:
        keys = _PUT.pop((root.token, ds, node), None)
    if keys:
        try:
            root.delete_many(sorted(keys))
        except Exception:  # noqa: BLE001  (a later commit that lists the folder prunes it)
            pass


def _marked_node(name: str) -> str | None:
    for mark in ("written-", "meta-"):
        if name.startswith(mark):
            return name[len(mark):].split(".")[0]
    return None


async def mark_written(root: Root, ds: str, branch: str, node: str, writer: str) -> bool:
    """Mark ``node`` as written by process ``writer``: create the first writer's mark, or, if it exists
    (another writer's, or our own whose reply was lost: taken as another's, which only costs a commit a
    LIST), put the mark of many writers. True if ``writer`` made the first writer's mark."""
    from hubdask.storage import retry

    key = written_key(ds, branch, node)
    _put_here(root, ds, node, key)  # before the request: a mark whose answer is lost may have landed
    create = lambda: root.create_async(key, writer.encode())  # noqa: E731
    first = await (create() if not root.is_remote
                   else retry.call(create, f"dataset {ds!r}: create {key!r}"))
    if not first:
        _put_here(root, ds, node, written_key(ds, branch, node, many=True))
        await root.put_async(written_key(ds, branch, node, many=True), b"")
    return bool(first)


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


def floor_key(ds: str, branch: str, window: int) -> str:
    """The floor record of claim window ``window`` (claims ``window * TRIM_EVERY`` up to the next
    window's): once it exists, no claim of that window is valid."""
    return f"{layout.head_log_prefix(ds, branch)}floor-{window:0{SEQ_DIGITS}d}"


def _floor_of(ds: str, branch: str, seq: int) -> str:
    """The floor record that, once it exists, refuses claim ``seq`` (that of its window)."""
    return floor_key(ds, branch, seq // TRIM_EVERY)


def _trim(root: Root, ds: str, branch: str, window: int) -> None:
    """Create the floor record of claim window ``window`` (first: from then on no claim of it is
    accepted), then delete the window's claims in one round trip; best effort (a crash leaves the
    window's claims behind, never a claim that could be accepted twice)."""
    import asyncio

    from hubdask.storage import sync

    if not root.create(floor_key(ds, branch, window), b""):
        return  # trimmed already
    first = max(window * TRIM_EVERY, 1)  # head 0 has no claim (it is recorded in the folder)

    async def run() -> None:
        await asyncio.gather(*(root.delete_async(claim_key(ds, branch, s))
                               for s in range(first, (window + 1) * TRIM_EVERY)), return_exceptions=True)

    sync(run())


def _pointer_key(ds: str, branch: str, seq: int, node: str, base: str | None) -> str:
    return f"{record_key(ds, branch, seq)}.{node}.{base or '-'}"


@dataclass
class _Listing:
    """What one LIST of a branch's folder says."""

    seqs: list[int]
    pointers: dict[int, list[tuple[str, str | None]]]
    marked: set[str]
    keys: list[str]
    meta: set[str] = dataclasses.field(default_factory=set)
    many: set[str] = dataclasses.field(default_factory=set)  # nodes whose many-writers mark was listed


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
                    {_marked_node(n) for n in names if n.startswith("written-")}, keys,
                    {_marked_node(n) for n in names if n.startswith("meta-")},
                    {_marked_node(n) for n in names if n.startswith("written-") and n.endswith(".many")})


def read_head(root: Root, ds: str, branch: str) -> Head | None:
    """The current head of ``branch``, or None if there is no such branch: one LIST (plus a GET of the
    record when its name copy is missing or ambiguous)."""
    for _ in range(LIST_TRIES):
        listing = _list(root, ds, branch)
        head = _newest(root, ds, branch, listing)
        if head is not None:
            _seen(root, ds, branch, head.seq)
            if head.deleted:
                return None
            return dataclasses.replace(head, written=head.node in listing.marked, meta=head.node in listing.meta,
                                       shared=head.node in listing.many,
                                       listing=listing)
    return _from_claims(root, ds, branch)


_SEEN: dict[tuple[str, str, str], int] = {}  # (root token, dataset, branch) -> the newest head seq seen here


def _seen(root: Root, ds: str, branch: str, seq: int) -> None:
    key = (root.token, ds, branch)
    if seq > _SEEN.get(key, -1):
        _SEEN[key] = seq


def _from_claims(root: Root, ds: str, branch: str) -> Head | None:
    """When listings showed no head: the newest claim (the claim log, trimmed to a bounded length, is
    listed: its newest claims are only ever added while the branch stands, so a branch this process saw
    cannot seem to vanish; then GETs of the numbers claimed since). Marks unknown: the node is taken as
    written and its metadata as changed (the safe answers). None for a branch never seen here or deleted
    since."""
    seen = _SEEN.get((root.token, ds, branch))
    if seen is None:
        return None
    prefix = layout.head_log_prefix(ds, branch)
    claimed = [int(n) for k in root.list_prefix(prefix) if (n := k[len(prefix):]).isdigit()]
    head = None
    for seq in sorted({s for s in claimed if s >= seen} | {seen, seen + 1}, reverse=True):  # head 0 has no claim
        if (head := read_head_at(root, ds, branch, seq)) is not None:
            break
    if head is None:
        return None
    while (nxt := read_head_at(root, ds, branch, head.seq + 1)) is not None:
        head = nxt
    _seen(root, ds, branch, head.seq)
    return None if head.deleted else dataclasses.replace(head, written=True, meta=True)


def read_head_at(root: Root, ds: str, branch: str, seq: int) -> Head | None:
    """Head record number ``seq`` of ``branch`` (None if it does not exist; a tombstone is a Head)."""
    rec = _record_at(root, ds, branch, seq)
    return None if rec is None else Head(branch, seq, rec["node"], rec["base"])


def tombstone_at(root: Root, ds: str, branch: str, seq: int) -> dict | None:
    """What deleted ``branch`` at head ``seq`` (``{"deleted": True}`` and, for a branch alone, its name),
    or None if head ``seq`` is no tombstone."""
    rec = _record_at(root, ds, branch, seq)
    if rec is None or rec["node"] != DELETED:
        return None
    return rec.get("deleted") or {"deleted": True}


def _record_at(root: Root, ds: str, branch: str, seq: int) -> dict | None:
    for key in (claim_key(ds, branch, seq), record_key(ds, branch, seq)):  # a claim, or a legacy record
        raw = root.get(key)
        if raw is not None:
            return parse_record(raw, ds, key, ("node", "base"))
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
               prior: _Listing | None = None, deleted: dict | None = None) -> Head | None:
    """Claim head ``seq`` (open node ``node`` on commit ``base``), then name it in the branch's folder;
    the new head, or None if another writer claimed it first (the branch moved) or the number is below
    the claim log's floor (this writer is stale): a creator however late can never win a number twice.

    ``prior``: the listing head ``seq - 1`` was read from, pruned in the round trip that names the new
    head (without it the folder is listed first); the new head carries what the folder then holds, as
    far as this process knows. A loser that finds the branch still behind the claim names the winner's
    head (``name_claim``: its creator died between the claim and the name).

    ``deleted``: claim a tombstone instead (node DELETED, no base), recording what deleted the branch."""
    if deleted is not None:
        node, base = DELETED, None
    # head 0 is recorded in the folder itself, where listing finds it even if its creator died before
    # naming it (a half-made branch or dataset is then seen, and finished or cleared); being never moved
    # to, it needs no claim that outlives the pruning of its record
    claim = claim_key(ds, branch, seq) if seq else record_key(ds, branch, 0)
    record = {"node": node, "base": base}
    if deleted is not None:
        # its own bytes (a retried create takes a record holding exactly its bytes for its own landing:
        # storage.retry), or a second deleter of the same head would take the first one's tombstone for its
        # own and stop short of the life created after it
        record.update(deleted=deleted, by=os.urandom(8).hex())
    if not root.create(claim, json.dumps(record).encode()):
        return None
    listing = prior if prior is not None else _list(root, ds, branch)
    name = _pointer_key(ds, branch, seq, node, base)
    left, floored = _prune(root, ds, branch, seq, node, listing, also_put=name,
                           check=_floor_of(ds, branch, seq) if seq else None)
    if floored:
        # a stale claimer of a trimmed number: its name of head ``seq``, below the branch's newest
        # (readers take the newest), and its claim go again; it lost
        root.delete_many([name, claim])
        return None
    if seq % TRIM_EVERY == CLAIMS_KEPT and seq >= TRIM_EVERY:
        _trim(root, ds, branch, seq // TRIM_EVERY - 1)
    _seen(root, ds, branch, seq)
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


def _prune(root: Root, ds: str, branch: str, seq: int, node: str, listing: _Listing, also_put: str,
           check: str | None = None) -> tuple[list[str], bool]:
    """Create the name copy ``also_put`` of the new head and, in the same round trip, delete the names
    (and legacy records) older than the last ``KEEP`` heads, and written marks of nodes that no kept head
    names, listed or not (their names are fixed), and GET ``check`` (the claim's floor record); best
    effort: a failure leaves a longer listing, nothing worse. Returns the keys of ``listing`` left, with
    ``also_put``, and whether ``check`` exists. (For a stale claimer all of this is harmless: its listing
    names heads long pruned, and its name is older than the branch's newest.)"""
    cut = seq - KEEP + 1
    kept_nodes = {node} | {n for s, named in listing.pointers.items() if s >= cut for n, _ in named}
    prefix = head_prefix(ds, branch)
    gone = []
    for k in listing.keys:
        name = k[len(prefix):]
        head = name.split(".")[0]
        if head.isdigit() and int(head) < cut:
            gone.append(k)
        elif _marked_node(name) is not None and _marked_node(name) not in kept_nodes:
            gone.append(k)
    dropped = {n for s, named in listing.pointers.items() if s < cut for n, _ in named} - kept_nodes
    gone = sorted(set(gone) | {written_key(ds, branch, n, many) for n in dropped for many in (False, True)}
                  | {meta_key(ds, branch, n) for n in dropped})
    import asyncio

    from hubdask.storage import sync

    async def floor() -> bool:
        return check is not None and await root.get_async(check) is not None

    async def run() -> bool:
        done = await asyncio.gather(root.put_async(also_put, b""), floor(), *(root.delete_async(k) for k in gone),
                                    return_exceptions=True)
        for must in done[:2]:  # the name copy matters (readers find the head by it), and the floor; deletes may fail
            if isinstance(must, BaseException):
                raise must
        return done[1]

    floored = sync(run())
    return [k for k in listing.keys if k not in set(gone)] + [also_put], floored


def start_branch(root: Root, ds: str, branch: str, node: str, base: str | None) -> Head | None:
    """Create ``branch``'s first head (open node ``node`` on commit ``base``): head 0 for a name never
    used, else the number after the tombstone of its last deletion; None if the branch exists. A
    create whose response was lost but that landed counts as ours (the record names ``node``)."""
    listing = _list(root, ds, branch)
    top = _newest(root, ds, branch, listing)
    if top is not None and not top.deleted:
        return top if top.node == node else None
    seq = 0 if top is None else top.seq + 1
    made = write_head(root, ds, branch, seq, node, base, prior=listing)
    if made is not None:
        return made
    if seq:
        name_claim(root, ds, branch, seq)  # another creator, perhaps one that died before naming it
    head = read_head(root, ds, branch)
    if head is None or head.node != node:
        return None
    name_head(root, ds, branch, head.seq, node, base)
    return head


def _newest(root: Root, ds: str, branch: str, listing: _Listing) -> Head | None:
    """The newest readable head that ``listing`` shows, tombstones included (None: a name never used, or
    a listing that missed every name); a half-deleted branch may lack its newest record."""
    for seq in reversed(listing.seqs):
        named = listing.pointers.get(seq, [])
        head = Head(branch, seq, *named[0]) if len(named) == 1 else read_head_at(root, ds, branch, seq)
        if head is not None:
            return head
    return None


def name_head(root: Root, ds: str, branch: str, seq: int, node: str, base: str | None) -> None:
    """Create the name copy of head record ``seq`` (idempotent; its creator calls it after winning)."""
    root.put(_pointer_key(ds, branch, seq, node, base), b"")


def list_branches(root: Root, ds: str) -> list[str]:
    """Branches whose newest named head is no tombstone (one LIST)."""
    prefix = layout.heads_prefix(ds)
    newest: dict[str, tuple[int, bool]] = {}
    for k in root.list_prefix(prefix):
        parts = k[len(prefix):].split("/")
        if layout.is_temp(k) or len(parts) != 2 or not parts[1].split(".")[0].isdigit():
            continue
        fields = parts[1].split(".")
        head = (int(fields[0]), len(fields) == 3 and fields[1] == DELETED)
        if head > newest.get(parts[0], (-1, False)):
            newest[parts[0]] = head
    return sorted(b for b, (_, deleted) in newest.items() if not deleted)


def lasting(ds: str, key: str) -> bool:
    """Whether ``key`` is a ref record that outlives the deletion of its branch or dataset: the claim log
    (claims and floors) and the head names (a tombstone among them); not marks, tags, temp files."""
    rel = key[len(layout.base(ds)):]
    if layout.is_temp(rel):
        return False
    if rel.startswith("refs/log/"):
        return True
    parts = rel.split("/")
    return rel.startswith("refs/heads/") and len(parts) == 4 and parts[3].split(".")[0].isdigit()


def swept_claims(root: Root, ds: str) -> list[str]:
    """Claims of windows that have a floor record (no such claim can be accepted, none is read): what a
    trimmer that died between its floor and its deletes, or a stale claimer that died before removing
    its refused claim, left. Claims of windows without a floor are never returned."""
    prefix = f"{layout.base(ds)}refs/log/"
    keys = [k for k in root.list_prefix(prefix) if not layout.is_temp(k)]
    floors = {(k.rsplit("/", 1)[0], int(k.rsplit("floor-", 1)[1])) for k in keys
              if k.rsplit("/", 1)[1].startswith("floor-")}
    out = []
    for k in keys:
        folder, _, name = k.rpartition("/")
        if name.isdigit() and (folder, int(name) // TRIM_EVERY) in floors:
            out.append(k)
    return out


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
