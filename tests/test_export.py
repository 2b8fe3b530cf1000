"""``hd.export`` / ``hubdask export``: a version as a plain zarr v3 hierarchy that stock zarr-python,
tensorstore and xarray open in a process where hubdask cannot even be imported; restartable; views
export their selection; on a dask.distributed cluster when one is active. Also ``dims=`` and xarray's
``engine="hubdask"``."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

import hubdask as hd
from hubdask.cli import main as cli
from helpers import snapshot

DATA = np.arange(10 * 6, dtype="int32").reshape(10, 6)
ROOT_OF_REPO = Path(__file__).resolve().parents[1]


def without_hubdask(code: str) -> dict:
    """Run ``code`` in a fresh process where ``import hubdask`` fails; it prints one JSON line."""
    guard = "import sys; sys.modules['hubdask'] = None\n"
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    out = subprocess.run([sys.executable, "-c", guard + textwrap.dedent(code)], capture_output=True, text=True,
                         env=env, timeout=120, cwd="/")
    assert out.returncode == 0, out.stderr[-3000:]
    return json.loads(out.stdout.strip().splitlines()[-1])


@pytest.fixture
def versions(tmp_path: Path) -> tuple[str, dict]:
    """``t/a``: tag v1 = DATA; then on main chunk (0, 0) zeroed (zarr deletes it) and row 9 changed."""
    root = str(tmp_path / "root")
    a = hd.array(DATA.shape, "t/a", dtype="int32", chunks=(4, 3), storage=root, dims=("time", "x"))
    a[...] = DATA
    c1 = a.commit("data")
    a.tag("v1")
    a[0:4, 0:3] = 0
    a[9] = 99
    main = DATA.copy()
    main[0:4, 0:3] = 0
    main[9] = 99
    return root, {"v1": DATA, "main": main, "commit": c1}


def test_export_opens_with_zarr_tensorstore_and_no_hubdask(versions, tmp_path):
    pytest.importorskip("tensorstore")
    root, want = versions
    out = str(tmp_path / "out.zarr")
    done = hd.export("t/a:v1", out, storage=root, progress=False)
    assert done.written == 7 and done.unchanged == 0  # 6 chunks and the metadata
    got = without_hubdask(f"""
        import json, zarr, tensorstore as ts
        z = zarr.open_array({out!r}, mode="r")
        t = ts.open({{"driver": "zarr3", "kvstore": {{"driver": "file", "path": {out!r}}}}}).result()
        print(json.dumps({{"zarr": z[:].tolist(), "ts": t.read().result().tolist(),
                          "dims": list(z.metadata.dimension_names)}}))
    """)
    assert np.array_equal(got["zarr"], want["v1"]) and np.array_equal(got["ts"], want["v1"])
    assert got["dims"] == ["time", "x"]


def test_export_of_a_branch_and_a_commit_id(versions, tmp_path):
    root, want = versions
    out = str(tmp_path / "out.zarr")
    hd.export("t/a", out, storage=root, progress=False)  # main, with its uncommitted writes
    import zarr

    np.testing.assert_array_equal(zarr.open_array(out, mode="r")[:], want["main"])
    assert zarr.open_array(out, mode="r").nchunks_initialized == 5  # the zeroed chunk is not there
    other = str(tmp_path / "c.zarr")
    hd.export(f"t/a:{want['commit']}", other, storage=root, progress=False)
    np.testing.assert_array_equal(zarr.open_array(other, mode="r")[:], want["v1"])


def test_export_is_restartable(versions, tmp_path):
    import zarr

    root, want = versions
    out = str(tmp_path / "out.zarr")
    hd.export("t/a:v1", out, storage=root, progress=False)
    again = hd.export("t/a:v1", out, storage=root, progress=False)
    assert (again.written, again.unchanged, again.deleted) == (0, 7, 0)
    # An interrupted export: one chunk missing, one damaged. Only those two are written again.
    chunk_files = sorted(p for p in Path(out, "c").rglob("*") if p.is_file())
    chunk_files[0].unlink()
    chunk_files[1].write_bytes(b"garbage")
    fixed = hd.export("t/a:v1", out, storage=root, progress=False)
    assert (fixed.written, fixed.unchanged) == (2, 5)
    np.testing.assert_array_equal(zarr.open_array(out, mode="r")[:], want["v1"])
    # The next version over the same target: changed chunks written, the deleted one removed.
    moved = hd.export("t/a:main", out, storage=root, progress=False)
    assert moved.deleted == 1 and moved.written == 2  # chunk (0, 0) gone; the chunk of row 9 rewritten
    np.testing.assert_array_equal(zarr.open_array(out, mode="r")[:], want["main"])


def test_a_view_exports_its_selection(versions, tmp_path):
    import zarr

    root, want = versions
    view = hd.load("t/a:v1", storage=root)[2:9, 1]
    out = str(tmp_path / "view.zarr")
    done = hd.export(view, out, progress=False)
    z = zarr.open_array(out, mode="r")
    np.testing.assert_array_equal(z[:], want["v1"][2:9, 1])
    assert z.chunks == (4,) and list(z.metadata.dimension_names) == ["time"]
    assert done.written == 3  # 2 chunks and the metadata
    again = hd.export(view, out, progress=False)
    assert (again.written, again.unchanged) == (0, 2)
    stepped = hd.load("t/a:v1", storage=root)[::-3, ::2]
    hd.export(stepped, out, progress=False)  # another shape over the same target: replaced
    np.testing.assert_array_equal(zarr.open_array(out, mode="r")[:], want["v1"][::-3, ::2])


def test_dataset_export_is_a_consolidated_group_xarray_opens(tmp_path):
    root = str(tmp_path / "root")
    ds = hd.dataset("t/ds", storage=root, images=dict(data=np.arange(8 * 4 * 4, dtype="uint8").reshape(8, 4, 4),
                                                      dims=("sample", "y", "x")),
                    labels=dict(data=np.arange(8), dims=("sample",)))
    ds.tag("v1")
    out = str(tmp_path / "ds.zarr")
    hd.export("t/ds:v1", out, storage=root, progress=False)
    got = without_hubdask(f"""
        import json, xarray as xr
        x = xr.open_zarr({out!r})  # consolidated metadata: no listing needed
        print(json.dumps({{"dims": dict(x.sizes), "labels": x["labels"].values.tolist(),
                          "images": int(x["images"].sum())}}))
    """)
    assert got == {"dims": {"sample": 8, "y": 4, "x": 4}, "labels": list(range(8)),
                   "images": int(np.arange(8 * 4 * 4, dtype="uint8").sum())}


def test_single_array_in_a_group_for_xarray(versions, tmp_path):
    root, want = versions
    out = str(tmp_path / "g.zarr")
    hd.export("t/a:v1", out, storage=root, group=True, progress=False)
    got = without_hubdask(f"""
        import json, xarray as xr
        x = xr.open_zarr({out!r})
        print(json.dumps({{"sizes": dict(x.sizes), "a": x["a"].values.tolist()}}))
    """)
    assert got == {"sizes": {"time": 10, "x": 6}, "a": want["v1"].tolist()}


def test_export_between_s3_roots(s3_root):
    import zarr

    a = hd.array(DATA.shape, "t/a", dtype="int32", chunks=(4, 3), storage=s3_root)
    a[...] = DATA
    a.commit("data")
    a.tag("v1")
    target = s3_root.rsplit("/", 1)[0] + "/exported.zarr"
    done = hd.export("t/a:v1", target, storage=s3_root, progress=False)
    assert done.written == 7
    from zarr.storage import FsspecStore

    z = zarr.open_array(FsspecStore.from_url(target, read_only=True), mode="r")
    np.testing.assert_array_equal(z[:], DATA)
    assert hd.export("t/a:v1", target, storage=s3_root, progress=False).unchanged == 7


def test_export_refuses_a_target_holding_other_things(versions, tmp_path):
    root, _ = versions
    out = tmp_path / "busy"
    out.mkdir()
    (out / "notes.txt").write_text("mine")
    before = snapshot(str(out))
    with pytest.raises(ValueError, match="not empty and holds no zarr"):
        hd.export("t/a:v1", str(out), storage=root)
    assert snapshot(str(out)) == before
    with pytest.raises(hd.NotFoundError):
        hd.export("t/a:nope", str(tmp_path / "x.zarr"), storage=root)
    assert not (tmp_path / "x.zarr").exists()


def test_cli_export(versions, tmp_path, capsys):
    import zarr

    root, want = versions
    out = str(tmp_path / "cli.zarr")
    assert cli(["--storage", root, "-q", "export", "t/a:v1", out]) == 0
    assert "7 objects written" in capsys.readouterr().out
    np.testing.assert_array_equal(zarr.open_array(out, mode="r")[:], want["v1"])
    assert cli(["--storage", root, "-q", "export", "t/a:v1", out]) == 0
    assert "0 objects written, 7 already equal" in capsys.readouterr().out
    assert cli(["--storage", root, "export", "t/a:nope", str(tmp_path / "n.zarr")]) == 1


@pytest.mark.slow
def test_export_runs_on_a_cluster(versions, tmp_path):
    import zarr
    from distributed import Client, LocalCluster

    root, want = versions
    out = str(tmp_path / "cl.zarr")
    from distributed import get_task_stream

    with LocalCluster(n_workers=2, threads_per_worker=1, processes=True, dashboard_address=None) as cluster, \
            Client(cluster) as client, get_task_stream(client) as stream:
        done = hd.export("t/a:v1", out, storage=root, progress=False)
    ran = [t for t in stream.data if "_copy_batch" in str(t["key"])]
    assert ran and all(t["worker"] in cluster.scheduler_info["workers"] or t["worker"] for t in ran)
    assert done.written == 7
    np.testing.assert_array_equal(zarr.open_array(out, mode="r")[:], want["v1"])


# --- dims and xarray -------------------------------------------------------------------------------


def test_dims_are_dimension_names_and_xarray_reads_them(versions):
    import xarray as xr

    from hubdask.integrations.xarray import HubdaskBackend

    root, want = versions
    x = xr.open_dataset("t/a:v1", engine=HubdaskBackend, storage=root)
    assert dict(x.sizes) == {"time": 10, "x": 6}
    data = x["a"].data
    import dask.array as da

    assert isinstance(data, da.Array) and data.npartitions == 6  # lazy: one task per chunk
    np.testing.assert_array_equal(x["a"].values, want["v1"])
    branch = xr.open_dataset("t/a", engine=HubdaskBackend, storage=root)
    np.testing.assert_array_equal(branch["a"].values, want["main"])
    assert hd.load("t/a:v1", storage=root)[:, 2].to_xarray().dims == ("time",)
    with pytest.raises(ValueError, match="dims"):
        hd.array((3, 4), "t/bad", dims=("only_one",), storage=root)
    assert "t/bad" not in hd.ls("t", storage=root)


def test_xarray_open_zarr_on_a_versions_store(tmp_path):
    import xarray as xr

    root = str(tmp_path / "root")
    ds = hd.dataset("t/ds", storage=root, images=dict(data=np.ones((4, 2), "uint8"), dims=("sample", "x")))
    ds.tag("v1")
    x = xr.open_zarr(hd.load("t/ds:v1", storage=root).zarr_store(), consolidated=False)
    assert dict(x.sizes) == {"sample": 4, "x": 2} and int(x["images"].sum()) == 8
    from hubdask.integrations.xarray import HubdaskBackend

    y = xr.open_dataset("t/ds:v1", engine=HubdaskBackend, storage=root)
    assert dict(y.sizes) == {"sample": 4, "x": 2} and int(y["images"].sum()) == 8
    assert y.attrs["hubdask_name"] == "t/ds:v1"


def test_engine_hubdask_is_an_installed_entry_point(versions, tmp_path):
    """The entry point declared in pyproject.toml, installed as a distribution's metadata, makes
    ``engine="hubdask"`` work (the editable install of the shared venv may predate it)."""
    import tomllib

    root, want = versions
    declared = tomllib.loads((ROOT_OF_REPO / "pyproject.toml").read_text())["project"]["entry-points"]["xarray.backends"]
    assert declared == {"hubdask": "hubdask.integrations.xarray:HubdaskBackend"}
    from importlib.metadata import entry_points

    site = tmp_path / "site"
    installed = {ep.name: ep.value for ep in entry_points(group="xarray.backends")}
    if installed.get("hubdask") != declared["hubdask"]:  # an install older than the entry point
        info = site / "hubdask_entry_points-0.dist-info"
        info.mkdir(parents=True)
        (info / "METADATA").write_text("Metadata-Version: 2.1\nName: hubdask-entry-points\nVersion: 0\n")
        (info / "entry_points.txt").write_text("[xarray.backends]\n" + "".join(f"{k} = {v}\n" for k, v in declared.items()))
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT_OF_REPO), str(site)])}
    code = textwrap.dedent(f"""
        import json, xarray as xr
        x = xr.open_dataset("t/a:v1", engine="hubdask", storage={root!r})
        t = xr.open_datatree("t/a:v1", engine="hubdask", storage={root!r})
        print(json.dumps({{"a": x["a"].values.tolist(), "tree": t["a"].values.tolist()}}))
    """)
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=120)
    assert out.returncode == 0, out.stderr[-3000:]
    got = json.loads(out.stdout.strip().splitlines()[-1])
    assert got == {"a": want["v1"].tolist(), "tree": want["v1"].tolist()}


def test_export_shows_progress(versions, tmp_path, capsys):
    root, _ = versions
    hd.export("t/a:v1", str(tmp_path / "p.zarr"), storage=root, progress=True)
    assert "100%" in capsys.readouterr().err
    hd.export("t/a:v1", str(tmp_path / "q.zarr"), storage=root, progress=False)
    assert "100%" not in capsys.readouterr().err
