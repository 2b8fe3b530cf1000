"""Storage requests of the common operations on S3 (moto's server), counted by the fault proxy: they
are deterministic, and each one that can be saved is a round trip saved. Beside each count, a second
actor (another process) does what would make the saved request necessary, at the worst instant, and
the result is still exact."""

from __future__ import annotations

from urllib.parse import unquote

import numpy as np
import pytest

import hubdask as hd

from helpers import run_python


pytestmark = pytest.mark.usefixtures("private_cache")  # the cache folder of this test alone


def _requests(proxy) -> list[str]:
    """The requests the proxy saw since the last call, as 'METHOD what' (LIST for a listing)."""
    out = []
    for e in proxy.events:
        what = unquote(e.target).split("@hub", 1)[-1].split("&", 1)[0]
        out.append(f"LIST {what}" if "list-type=" in e.target else f"{e.method} {what}")
    proxy.reset_counters()
    return out


def _other_process(root: str, code: str) -> None:
    done = run_python(f"import numpy as np, hubdask as hd\na = hd.load('q/r', storage={root!r})\n{code}")
    assert done.returncode == 0, done.stderr


def test_a_small_read_by_the_only_writer_is_the_head_listing_and_the_chunk(s3_root_faulty, fault_proxy):
    """The process that alone wrote the open node knows every version there: a small read at the branch
    is the head's LIST (freshness) and the chunk's GET, as for a node nobody wrote; no LIST of the node."""
    a = hd.array((64, 64), name="q/r", dtype="int32", chunks=(8, 64), storage=s3_root_faulty)
    a[:] = 1
    a.commit("ones")
    a[0:8] = 2
    a[3:5].read()  # the head now shows this process's mark
    _requests(fault_proxy)
    np.testing.assert_array_equal(a[3:5].read(), np.full((2, 64), 2))
    got = _requests(fault_proxy)
    assert len(got) == 2 and got[0].startswith("LIST ") and "/refs/heads/main/" in got[0], got
    assert got[1].startswith("GET ") and "/c/0/0@" in got[1], got
    np.testing.assert_array_equal(a[20:22].read(), np.full((2, 64), 1))  # a chunk of the base commit
    assert len(_requests(fault_proxy)) == 2


def test_the_only_writer_s_read_sees_another_process_s_write_that_returned_before_it(s3_root_faulty, fault_proxy):
    """Worst instant for the saved LIST: another process writes the very chunk into the same open node
    and returns just before the read starts (its mark of many writers is in the head's listing then),
    then commits; each read after that sees it."""
    a = hd.array((64, 64), name="q/r", dtype="int32", chunks=(8, 64), storage=s3_root_faulty)
    a[0:8] = 2
    a[0:2].read()
    _other_process(s3_root_faulty, "a[3:5] = 7")
    expected = np.full((8, 64), 2)
    expected[3:5] = 7
    np.testing.assert_array_equal(a[0:8].read(), expected)
    np.testing.assert_array_equal(a[0:8].to_dask().compute(), expected)
    _other_process(s3_root_faulty, "a[4] = 9; a.commit('theirs')")
    expected[4] = 9
    np.testing.assert_array_equal(a[0:8].read(), expected)
    a[6] = 5  # the only writer again, in the node after their commit
    expected[6] = 5
    np.testing.assert_array_equal(a[0:8].read(), expected)


def test_an_append_is_its_version_its_chunks_and_two_seal_checks(s3_root_faulty, fault_proxy):
    """An append takes no head LIST and no LIST of the metadata's versions (the newest one seen here is
    the fence's hint), re-reads no metadata it made itself, and marks a node once: four requests (the
    metadata's create, its seal check, the chunk, the write's seal check)."""
    a = hd.array((0, 64), name="q/r", dtype="int32", chunks=(8, 64), storage=s3_root_faulty)
    a.append(np.zeros((8, 64), np.int32))
    _requests(fault_proxy)
    a.append(np.ones((8, 64), np.int32))
    got = _requests(fault_proxy)
    assert [g.split(" ")[0] for g in got] == ["PUT", "GET", "PUT", "GET"], got
    assert "/zarr.json" in got[0] and "/seals/" in got[1] and "/c/1/0" in got[2] and "/seals/" in got[3], got
    a.commit("two")
    _requests(fault_proxy)
    a.append(np.full((3, 64), 2, np.int32))  # the first in a new open node: its two marks too, together
    got = _requests(fault_proxy)
    assert len(got) == 6 and sum("/refs/heads/main/" in g for g in got) == 2, got
    expected = np.concatenate([np.zeros((8, 64)), np.ones((8, 64)), np.full((3, 64), 2)])
    np.testing.assert_array_equal(hd.load("q/r", storage=s3_root_faulty).read(), expected)


def test_an_append_whose_hint_is_stale_takes_rows_nobody_took(s3_root_faulty, fault_proxy):
    """Worst instant for the hint: another process appends between two appends of this one, so the
    newest metadata version seen here is stale; the create of the next one fails, the versions are
    listed, and the rows reserved are the next free ones (nothing overwritten, nothing lost)."""
    a = hd.array((0, 4), name="q/r", dtype="int32", chunks=(2, 4), storage=s3_root_faulty)
    assert a.append(np.full((2, 4), 1, np.int32))[0] == slice(0, 2)
    _other_process(s3_root_faulty, "a.append(np.full((3, 4), 2, np.int32))")
    assert a.append(np.full((2, 4), 3, np.int32))[0] == slice(5, 7)
    _other_process(s3_root_faulty, "a.commit('theirs'); a.append(np.full((1, 4), 4, np.int32))")
    assert a.append(np.full((1, 4), 5, np.int32))[0] == slice(8, 9)
    expected = np.repeat([1, 1, 2, 2, 2, 3, 3, 4, 5], 4).reshape(9, 4)
    np.testing.assert_array_equal(hd.load("q/r", storage=s3_root_faulty).read(), expected)
    np.testing.assert_array_equal(a.read(), expected)
