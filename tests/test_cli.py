"""The ``hubdask`` command line: every command on a real root, exit codes, one-line errors, and ``cp``
between roots (local and moto's S3) and from .npy / HDF5 / zarr files, restartable without rewriting."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np
import pytest

import hubdask as hd
from hubdask.cli import main, split_index


@pytest.fixture
def root(tmp_path, monkeypatch):
    path = tmp_path / "root"
    monkeypatch.setenv("HUBDASK_ROOT", str(path))
    monkeypatch.setenv("HUBDASK_PROGRESS", "off")
    return str(path)


def run(capsys, *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def data(shape=(20, 30, 40), seed=0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 1000, size=shape).astype(np.int32)


def test_split_index():
    assert split_index("o/d:v1[0, 10:20, ..., ::2]") == ("o/d:v1", (0, slice(10, 20), Ellipsis, slice(None, None, 2)))
    assert split_index("o/d") == ("o/d", ())
    assert split_index("o/d[-1]") == ("o/d", (-1,))


def test_version_commands_walk(root, capsys):
    a = hd.array((4, 8, 8), "team/cube", dtype="float32", chunks=(2, 8, 8))
    a[0] = 1.5
    code, out, _ = run(capsys, "ls")
    assert code == 0 and out.split() == ["team/cube"]
    assert run(capsys, "ls", "-l", "team")[1].split() == ["team/cube", "4x8x8", "float32"]
    code, out, _ = run(capsys, "commit", "team/cube", "-m", "first row")
    cid = out.strip()
    assert code == 0 and len(cid) == 20
    assert run(capsys, "tag", "team/cube", "v1")[1].strip() == f"v1 -> {cid}"
    assert run(capsys, "tag", "team/cube")[1].split() == ["v1", cid]
    assert run(capsys, "branch", "team/cube:v1", "exp")[0] == 0
    assert run(capsys, "branch", "team/cube")[1].split() == ["exp", "*", "main"]
    hd.load("team/cube:exp")[1] = 2.0
    run(capsys, "commit", "team/cube:exp", "-m", "on exp")
    log = run(capsys, "log", "team/cube:exp")[1].splitlines()
    assert [line.split("  ")[2] for line in log] == ["on exp", "first row", "created"]
    assert "(tag: v1)" in log[1]
    entries = json.loads(run(capsys, "log", "--json", "team/cube")[1])
    assert [e["message"] for e in entries] == ["first row", "created"] and entries[0]["tags"] == ["v1"]
    code, out, _ = run(capsys, "info", "team/cube")
    assert code == 0
    for text in ("team/cube:main", "4 x 8 x 8", "float32", "2 x 8 x 8", "2 x 1 x 1 = 2 chunks, 1 written",
                 "1.0 KiB (1,024 bytes)", "first row", "exp, main", "v1 -> "):
        assert text in out, text
    info = json.loads(run(capsys, "info", "--json", "team/cube:v1")[1])
    assert info["chunks_written"] == 1 and info["branch"] is None and info["commit"] == cid
    assert 0 < info["stored_bytes"] < info["logical_bytes"]
    assert run(capsys, "branch", "team/cube", "-d", "exp")[0] == 0
    assert run(capsys, "tag", "team/cube", "-d", "v1")[0] == 0
    assert hd.load("team/cube").tags == {}
    assert run(capsys, "log", "team/cube:exp")[0] == 1  # the branch is gone
    code, out, _ = run(capsys, "gc", "team/cube", "--dry-run", "--grace", "0")
    # exp's commit and its chunk (commits copy nothing, so no working copies are left over)
    assert code == 0 and out.startswith("would delete 2 unreachable objects")
    assert run(capsys, "gc", "team/cube", "--grace", "0")[1].startswith("would delete 2")  # a dry run, as hd.gc
    assert run(capsys, "gc", "team/cube", "--grace", "0", "--yes")[1].startswith("deleted 2")
    assert np.asarray(hd.load("team/cube"))[0].max() == 1.5
    code, _, err = run(capsys, "rm", "team/cube")  # stdin is not a terminal under pytest
    assert code == 2 and "--yes" in err
    assert run(capsys, "rm", "team/cube", "--yes")[0] == 0 and hd.ls() == []


def test_show_writes_the_slice(root, capsys, tmp_path):
    from PIL import Image

    img = np.random.default_rng(3).integers(0, 256, size=(2, 30, 40, 3), dtype=np.uint8)
    a = hd.array(img.shape, "pics/rgb", dtype="uint8")
    a[...] = img
    out = tmp_path / "one.png"
    code, text, _ = run(capsys, "show", "pics/rgb[1]", "-o", str(out), "--min-side", "0")
    assert code == 0 and "30x40x3" in text
    assert np.array_equal(np.asarray(Image.open(out)), img[1])
    run(capsys, "show", "pics/rgb[1]", "-o", str(out))  # small: enlarged 6x (40 -> 240 px), sharp pixels
    assert np.array_equal(np.asarray(Image.open(out)), img[1].repeat(6, axis=0).repeat(6, axis=1))
    run(capsys, "show", "pics/rgb[1, 10:20, :, 0]", "-o", str(out), "--cmap", "gray", "--min-side", "0")
    assert np.array_equal(np.asarray(Image.open(out)), img[1, 10:20, :, 0])  # uint8 gray: as stored
    run(capsys, "show", "pics/rgb[1, 10:20, :, 0]", "-o", str(out), "--cmap", "viridis", "--min-side", "0")
    shown, band = np.asarray(Image.open(out)), img[1, 10:20, :, 0]
    assert shown.shape == (10, 40, 3)  # scaled to the value range and colored
    assert tuple(shown[np.unravel_index(band.argmin(), band.shape)]) == (68, 1, 84)
    assert tuple(shown[np.unravel_index(band.argmax(), band.shape)]) == (253, 231, 37)
    code, _, err = run(capsys, "show", "pics/rgb", "-o", str(out))
    assert code == 1 and "index it further" in err


def test_user_mistakes_are_one_line_errors(root, capsys):
    hd.array((3,), "o/a", dtype="int8")
    hd.load("o/a").tag("t")
    cases = [
        (("info", "no/such"), 1, "no dataset 'no/such'"),
        (("info", "bad name!"), 2, "invalid dataset"),
        (("show", "o/a[0"), 2, "must end with ']'"),
        (("show", "o/a[x]"), 2, "bad index item"),
        (("show", "o/a[7]"), 2, "out of bounds"),
        (("commit", "o/a:t"), 1, "read-only"),
        (("frobnicate",), 2, "invalid choice"),
        (("info",), 2, "required"),
        (("cp", "/no/such.npy", "o/b"), 1, "no file or folder"),
        (("tag", "o/a", "-d"), 2, "expected one argument"),
        (("log", "o/a:nope"), 1, "no branch, tag or commit 'nope'"),
    ]
    for argv, want_code, want in cases:
        code, _, err = run(capsys, *argv)
        assert code == want_code, (argv, code, err)
        assert err.startswith("hubdask: error: ") and want in err and err.count("\n") == 1, (argv, err)
    assert run(capsys)[0] == 2  # no command: help on stderr


def test_entry_point_and_env_root(root, tmp_path):
    """The installed ``hubdask`` script: HUBDASK_ROOT, --storage before or after the command, no tracebacks."""
    exe = os.path.join(os.path.dirname(sys.executable), "hubdask")
    env = {**os.environ, "HUBDASK_ROOT": root}
    hd.array((2, 2), "env/x", storage=root)
    other = str(tmp_path / "other")
    hd.array((2, 2), "elsewhere/y", storage=other)
    r = subprocess.run([exe, "ls"], capture_output=True, text=True, env=env, timeout=120)
    assert r.returncode == 0 and r.stdout.split() == ["env/x"]
    r = subprocess.run([exe, "ls", "--storage", other], capture_output=True, text=True, env=env, timeout=120)
    assert r.stdout.split() == ["elsewhere/y"], r.stderr
    r = subprocess.run([exe, "info", "env/nothing"], capture_output=True, text=True, env=env, timeout=120)
    assert r.returncode == 1 and "Traceback" not in r.stderr and r.stderr.count("\n") == 1
    r = subprocess.run([exe, "--help"], capture_output=True, text=True, env=env, timeout=120)
    assert r.returncode == 0 and "cp" in r.stdout and "view" in r.stdout


def test_storage_option_before_or_after_the_command(root, capsys, tmp_path):
    other = str(tmp_path / "other")
    hd.array((2, 2), "elsewhere/y", storage=other)
    for argv in (["--storage", other, "ls"], ["ls", "--storage", other]):
        assert run(capsys, *argv)[1].split() == ["elsewhere/y"], argv


def test_view_command_serves_on_localhost(root):
    import signal
    import urllib.request

    a = hd.array((3, 8, 8), "v/cube", dtype="uint8")
    a[1] = 9
    exe = os.path.join(os.path.dirname(sys.executable), "hubdask")
    proc = subprocess.Popen([exe, "view", "v/cube"], stdout=subprocess.PIPE, text=True,
                            env={**os.environ, "HUBDASK_ROOT": root})
    try:
        line = proc.stdout.readline()
        url = line.split(" at ")[1].split()[0]
        assert url.startswith("http://127.0.0.1:"), line
        with urllib.request.urlopen(url + "stats?i=1", timeout=30) as r:
            st = json.loads(r.read())
        assert st["min"] == st["max"] == 9
    finally:
        proc.send_signal(signal.SIGINT)
        assert proc.wait(30) == 0


def test_cp_from_files_is_restartable(root, capsys, tmp_path):
    h5py = pytest.importorskip("h5py", reason="HDF5 input needs h5py (test extra)")
    import zarr

    x = data()
    np.save(tmp_path / "x.npy", x)
    with h5py.File(tmp_path / "x.h5", "w") as f:
        f.create_dataset("group/x", data=x, chunks=(5, 30, 40))
    z = zarr.open_array(str(tmp_path / "x.zarr"), mode="w", shape=x.shape, chunks=(10, 15, 40), dtype=x.dtype)
    z[:] = x

    code, out, _ = run(capsys, "cp", str(tmp_path / "x.npy"), "in/npy", "--chunks", "5,30,40")
    assert code == 0 and "chunks written 4, already equal 0" in out
    assert run(capsys, "cp", str(tmp_path / "x.npy"), "in/npy")[1].count("chunks written 0, already equal 4") == 1
    code, out, _ = run(capsys, "cp", f"{tmp_path / 'x.h5'}:group/x", "in/h5", "-m", "from hdf5")
    assert code == 0 and "chunks written 4" in out and "commit " in out
    assert hd.load("in/h5").chunks == (5, 30, 40) and hd.load("in/h5").log()[0].message == "from hdf5"
    assert "chunks written 4" in run(capsys, "cp", str(tmp_path / "x.zarr"), "in/zarr")[1]
    for name in ("in/npy", "in/h5", "in/zarr"):
        assert np.array_equal(np.asarray(hd.load(name)), x), name

    # an interrupted copy: half the chunks are there (one of them wrong); a rerun writes only the rest
    part = hd.array(x.shape, "in/part", dtype="int32", chunks=(5, 30, 40))
    part[:10] = x[:10]
    part[0, 0, 0] = -1
    code, out, _ = run(capsys, "cp", str(tmp_path / "x.npy"), "in/part")
    assert "chunks written 3, already equal 1" in out
    assert np.array_equal(np.asarray(hd.load("in/part")), x)
    code, _, err = run(capsys, "cp", str(tmp_path / "x.npy"), "in/other-shape", "--chunks", "5,5")
    assert code == 1 and "chunks" in err
    hd.array((3, 3), "in/small", dtype="int32")
    code, _, err = run(capsys, "cp", str(tmp_path / "x.npy"), "in/small")
    assert code == 1 and "exists with shape (3, 3)" in err


def test_cp_between_local_and_s3_visits_written_chunks_only(root, s3_root, capsys, monkeypatch, tmp_path):
    monkeypatch.setenv("HUBDASK_CACHE", str(tmp_path / "cache"))
    big = hd.array((10**9, 16, 16), "big/sparse", dtype="uint16", chunks=(4, 16, 16), fill_value=7)
    rows = data((6, 16, 16), seed=5).astype(np.uint16)
    big[:3] = rows[:3]
    big[10**8:10**8 + 3] = rows[3:]
    big.commit("two places")
    dst = f"{s3_root}/big-copy"
    code, out, _ = run(capsys, "cp", "big/sparse", dst, "-m", "copied")
    assert code == 0 and "chunks written 2, already equal 0" in out, out
    copy = hd.load(dst)
    assert copy.shape == (10**9, 16, 16) and copy.chunks == (4, 16, 16) and copy.fill_value == 7
    assert np.array_equal(np.asarray(copy[10**8:10**8 + 3]), rows[3:])
    assert np.array_equal(np.asarray(copy[:4]), np.concatenate([rows[:3], np.full((1, 16, 16), 7, np.uint16)]))
    assert "chunks written 0, already equal 2" in run(capsys, "cp", "big/sparse", dst)[1]
    back = run(capsys, "cp", dst, "big/back")[1]  # and back from S3 to the local root
    assert "chunks written 2" in back
    assert np.array_equal(np.asarray(hd.load("big/back")[10**8:10**8 + 3]), rows[3:])
    code, out, _ = run(capsys, "info", dst)
    assert code == 0 and s3_root in out and "2 written" in out and "testing" not in out


def test_demo_runs_in_a_few_seconds(tmp_path):
    r = subprocess.run([sys.executable, "-m", "hubdask.demo", "--storage", str(tmp_path), "--cleanup"],
                       capture_output=True, text=True, timeout=120, env={**os.environ, "HUBDASK_PROGRESS": "off"})
    assert r.returncode == 0, r.stderr
    for text in ("7.0 PiB logical", "another process", "b[0].mean().compute()", "time travel", "deleted"):
        assert text in r.stdout, text
    assert hd.ls(storage=str(tmp_path)) == []


# --- issue 18: the CLI speaks CLI, and the first hour -------------------------------------------------


def test_cp_into_a_tag_is_read_only_and_writes_nothing(root, capsys, tmp_path):
    from helpers import snapshot

    a = hd.array((4, 4), "o/src", dtype="int16", chunks=(2, 2))
    a[:] = 3
    a.commit("c")
    a.tag("v1")
    hd.array((4, 4), "o/dst", dtype="int16", chunks=(2, 2)).tag("t")
    before = snapshot(root)
    for dst in ("o/src:v1", "o/dst:t"):  # equal data, then different data: both refused
        code, out, err = run(capsys, "cp", "o/src", dst)
        assert code == 1 and out == "", (dst, out, err)
        assert "read-only" in err and "branch" in err and "AssertionError" not in err and err.count("\n") == 1, err
    assert snapshot(root) == before


def test_log_n_applies_to_json(root, capsys):
    a = hd.array((2,), "o/log", dtype="int8")
    for i in range(3):
        a[0] = i
        a.commit(f"c{i}")
    entries = json.loads(run(capsys, "log", "o/log", "-n", "1", "--json")[1])
    assert [e["message"] for e in entries] == ["c2"]
    assert len(json.loads(run(capsys, "log", "o/log", "--json")[1])) == 4


def test_commit_with_nothing_changed_creates_no_commit(root, capsys):
    a = hd.array((2,), "o/same", dtype="int8")
    a[0] = 1
    code, out, _ = run(capsys, "commit", "o/same", "-m", "one")
    cid = out.strip()
    assert code == 0 and len(hd.load("o/same").log()) == 2
    code, out, _ = run(capsys, "commit", "o/same", "-m", "again")
    assert code == 0 and out.startswith("nothing to commit") and cid in out
    assert [c.message for c in hd.load("o/same").log()] == ["one", "created"]
    code, out, _ = run(capsys, "commit", "o/same", "-m", "empty", "--allow-empty")
    assert code == 0 and out.strip() != cid and hd.load("o/same").log()[0].message == "empty"


def test_merge_and_diff_commands(root, capsys):
    a = hd.array((4, 4), "o/m", dtype="int32", chunks=(2, 2))
    a.commit("base")
    exp = a.branch("exp")
    exp[0:2, 0:2] = 5
    exp.commit("on exp")
    a[2:4, 2:4] = 6
    a.commit("on main")
    code, out, _ = run(capsys, "diff", "o/m:exp", "o/m:main")
    lines = out.splitlines()
    assert code == 0 and lines[0].split() == ["change", "array", "chunk", "region"]
    assert sorted(line.split()[2] for line in lines[1:-1]) == ["0/0", "1/1"], out
    changes = json.loads(run(capsys, "diff", "o/m:exp", "o/m:main", "--json")[1])
    assert {(c["kind"], tuple(c["chunk"])) for c in changes} == {("added", (0, 0)), ("deleted", (1, 1))}
    assert changes[0]["region"] == [[0, 2], [0, 2]]
    code, out, _ = run(capsys, "merge", "o/m", "exp", "-m", "bring exp")
    assert code == 0 and out.startswith("merged exp into o/m:main")
    merged = np.asarray(hd.load("o/m"))
    assert merged[0, 0] == 5 and merged[3, 3] == 6 and hd.load("o/m").log()[0].message == "bring exp"
    assert run(capsys, "diff", "o/m:main", "o/m:main")[1].startswith("no differences")
    b = hd.load("o/m:exp")  # both sides change chunk (0, 0): refused unless a strategy is given
    b[0, 0] = 1
    b.commit("x")
    m = hd.load("o/m")
    m[0, 0] = 2
    m.commit("y")
    code, _, err = run(capsys, "merge", "o/m", "exp")
    assert code == 1 and "--strategy ours or --strategy theirs" in err and "strategy=" not in err, err
    assert run(capsys, "merge", "o/m", "exp", "--strategy", "theirs")[0] == 0
    assert np.asarray(hd.load("o/m"))[0, 0] == 1


def test_errors_name_cli_commands_not_python(root, capsys):
    a = hd.array((2,), "o/adv", dtype="int8")
    a.tag("t")
    for argv, want, not_want in [
        (("info", "o/missing"), "'hubdask ls'", "hd.ls()"),
        (("commit", "o/adv:t"), "'hubdask branch NAME BRANCH'", ".branch(NAME)"),
        (("rm", "o/adv:t", "-y"), "'hubdask branch NAME -d BRANCH'", ".delete_branch"),
    ]:
        err = run(capsys, *argv)[2]
        assert want in err and not_want not in err, (argv, err)


def test_busy_port_and_missing_folder_are_one_line_naming_them(root, capsys, tmp_path):
    import socket

    a = hd.array((2, 8, 8), "o/pic", dtype="uint8")
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen(1)
        port = busy.getsockname()[1]
        code, _, err = run(capsys, "view", "o/pic", "--port", str(port))
    assert code == 2 and f"port {port}" in err and "Errno" not in err and err.count("\n") == 1, err
    code, _, err = run(capsys, "show", "o/pic[0]", "-o", str(tmp_path / "missing" / "dir" / "x.png"))
    assert code == 2 and str(tmp_path / "missing" / "dir") in err and "Errno" not in err, err
    assert a.shape == (2, 8, 8)


def test_show_single_channel_images_as_gray(root, capsys, tmp_path):
    """The mnist layout (n, 28, 28, 1): one image shows as gray, enlarged with sharp pixels."""
    from PIL import Image

    digits = np.random.default_rng(1).integers(0, 256, size=(3, 28, 28, 1), dtype=np.uint8)
    a = hd.array(digits.shape, "o/mnist", dtype="uint8")
    a[...] = digits
    out = tmp_path / "d.png"
    code, text, err = run(capsys, "show", "o/mnist[2]", "-o", str(out))
    assert code == 0, err
    shown = np.asarray(Image.open(out))
    assert shown.shape == (252, 252)  # 28 px enlarged 9x: a readable picture
    assert np.array_equal(shown[::9, ::9], digits[2, :, :, 0]) and np.array_equal(shown[8::9, 8::9], digits[2, :, :, 0])


def test_help_says_what_a_missing_ref_means(root, capsys):
    from hubdask.cli import build_parser

    text = " ".join(build_parser().format_help().split())
    assert "first branch" in text and "default main" not in text


def test_progress_bars_are_plain_text_without_ipywidgets(monkeypatch):
    """Without ipywidgets (Jupyter's widget bars need it) a bar is tqdm's text one: never the notebook bar
    that warns "IProgress not found"."""
    import warnings

    from hubdask import progress

    monkeypatch.setitem(sys.modules, "ipywidgets", None)  # `import ipywidgets` raises ImportError
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        with progress.bar(3, "x", progress=True) as bar:
            bar.update(3)
    assert type(bar).__module__ == "tqdm.std"


def test_cp_keeps_or_sets_the_shard_layout(root, s3_root, capsys, tmp_path):
    """cp of a sharded array keeps its shards (one object per shard, whole shards written); --shards
    sets them for a file source ('auto' or a shape) or drops them ('none'); a bad shape is one line."""
    import zarr

    x = data((24, 6, 8))
    src = hd.array(x.shape, "sh/src", dtype="int32", chunks=(2, 6, 8), shards=(8, 6, 8))
    src[:] = x
    src[5, 0, 0] = -1
    x[5, 0, 0] = -1
    code, out, _ = run(capsys, "cp", "sh/src", f"{s3_root}/sh/copy")
    assert code == 0 and "chunks written 3" in out, out  # three shards, not twelve chunks
    copy = hd.load(f"{s3_root}/sh/copy")
    assert copy.chunks == (2, 6, 8) and copy.shards == (8, 6, 8)
    np.testing.assert_array_equal(copy.read(), x)
    assert "already equal 3" in run(capsys, "cp", "sh/src", f"{s3_root}/sh/copy")[1]
    z = zarr.create_array(str(tmp_path / "s.zarr"), shape=x.shape, chunks=(4, 6, 8), shards=(12, 6, 8),
                          dtype="int32", zarr_format=3)
    z[:] = x
    assert run(capsys, "cp", str(tmp_path / "s.zarr"), "sh/fromzarr")[0] == 0
    assert (hd.load("sh/fromzarr").chunks, hd.load("sh/fromzarr").shards) == ((4, 6, 8), (12, 6, 8))
    np.save(tmp_path / "x.npy", x)
    assert run(capsys, "cp", str(tmp_path / "x.npy"), "sh/auto", "--chunks", "1,6,8", "--shards", "auto")[0] == 0
    assert hd.load("sh/auto").shards == (24, 6, 8)  # the whole small array in one shard
    assert run(capsys, "cp", str(tmp_path / "x.npy"), "sh/set", "--chunks", "3,6,8", "--shards", "6,6,8")[0] == 0
    assert hd.load("sh/set").shards == (6, 6, 8)
    assert run(capsys, "cp", "sh/src", "sh/plain", "--shards", "none")[0] == 0
    assert hd.load("sh/plain").shards is None and hd.load("sh/plain").chunks == (2, 6, 8)
    for name in ("sh/auto", "sh/set", "sh/plain", "sh/fromzarr"):
        np.testing.assert_array_equal(hd.load(name).read(), x)
    code, _, err = run(capsys, "cp", str(tmp_path / "x.npy"), "sh/bad", "--chunks", "3,6,8", "--shards", "4,6,8")
    assert code == 1 and "'sh/bad'" in err and "multiple of chunks (3, 6, 8)" in err
    code, _, err = run(capsys, "cp", str(tmp_path / "x.npy"), "sh/bad", "--shards", "big")
    assert code == 2 and "--shards 'big'" in err
    assert "sh/bad" not in hd.ls("sh")
