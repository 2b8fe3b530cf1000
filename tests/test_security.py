"""Credentials never leak: a distinctive secret given through storage_options or the environment is
grepped for in logs, reprs, errors, the CLI's output, dask graphs, notebooks' outputs and benchmark
results. Data is never unpickled from storage; the viewer binds to localhost.
"""

from __future__ import annotations

import ast
import logging
import os
import pickle
import re
import subprocess
import sys
import uuid
from pathlib import Path

import dask
import numpy as np
import pytest

import hubdask as hd
from hubdask.storage import open_root

from support.faultproxy import FaultProxy

REPO = Path(__file__).resolve().parents[1]
SECRET = f"hubdaskSECRET{uuid.uuid4().hex}"  # moto's server accepts any secret
KEY_ID = "AKIAHUBDASKTESTKEY01"


def leaks(text: str) -> bool:
    return SECRET in text


def test_secret_in_storage_options_never_shows(s3_root, moto_server, caplog, capsys, tmp_path, monkeypatch):
    monkeypatch.setenv("HUBDASK_CACHE", str(tmp_path / "cache"))
    caplog.set_level(logging.DEBUG)  # every library's debug log, botocore's and s3fs's included
    opts = {"key": KEY_ID, "secret": SECRET, "endpoint_url": moto_server.endpoint}
    seen: list[str] = []
    for client in ("obstore", "s3fs"):
        monkeypatch.setenv("HUBDASK_S3_CLIENT", client)
        url = f"{s3_root}-{client}"
        a = hd.array((8, 8), name="sec/a", dtype="float32", chunks=(4, 4), storage=url, storage_options=opts)
        a[:] = 1.0
        cid = a.commit("c")
        b = hd.load("sec/a", storage=url, storage_options=opts)
        seen += [repr(a), str(a), a._repr_html_(), repr(b._source), repr(b._source.root), repr(b._repo),
                 repr(b.to_dask()), str(dict(b.to_dask().__dask_graph__())), str(dask.base.tokenize(b)),
                 str(b.log()), str(hd.ls("sec", storage=url, storage_options=opts)), repr(b.diff(cid))]
        for bad in (lambda: hd.load("sec/missing", storage=url, storage_options=opts),
                    lambda: hd.load("sec/a:nope", storage=url, storage_options=opts),
                    lambda: hd.load(f"sec/a:{cid}", storage=url, storage_options=opts).__setitem__(0, 1)):
            with pytest.raises((hd.NotFoundError, hd.ReadOnlyError)) as info:
                bad()
            seen += [str(info.value), repr(info.value)]
    # a StorageError through a proxy that fails everything: the client's error text is kept, never the key
    with FaultProxy(moto_server.endpoint) as proxy:
        proxy.set(error_rate=1.0)
        for k, v in {"HUBDASK_RETRIES": "1", "HUBDASK_RETRY_WAIT": "0.01", "HUBDASK_S3_CLIENT": "obstore"}.items():
            monkeypatch.setenv(k, v)
        with pytest.raises(hd.StorageError) as info:
            hd.load("sec/a", storage=f"{s3_root}-obstore",
                    storage_options={**opts, "endpoint_url": proxy.endpoint}).read()
        seen += [str(info.value), repr(info.value), str(info.value.__cause__)]
    out = capsys.readouterr()
    seen += [out.out, out.err, caplog.text]
    assert caplog.text, "nothing was logged: the log check would be vacuous"
    assert not [s for s in seen if leaks(s)]
    assert SECRET.encode() not in b"".join(v for v in _objects(s3_root))  # nor written into storage


def _objects(s3_root: str):
    root = open_root(s3_root.rsplit("/", 1)[0])
    for k in root.list_prefix(""):
        yield root.get(k) or b""


def test_secret_in_environment_never_shows_in_cli(moto_server, s3_root, tmp_path):
    """The CLI, run with the secret in AWS_SECRET_ACCESS_KEY, prints nothing of it, on success or error."""
    env = {**os.environ, **moto_server.env(), "AWS_ACCESS_KEY_ID": KEY_ID, "AWS_SECRET_ACCESS_KEY": SECRET,
           "HUBDASK_CACHE": str(tmp_path / "cache"), "HUBDASK_ROOT": s3_root}
    np.save(tmp_path / "x.npy", np.arange(12.0).reshape(3, 4))
    runs = [["cp", str(tmp_path / "x.npy"), "sec/cli", "-m", "first"], ["info", "sec/cli"], ["log", "sec/cli"],
            ["commit", "sec/cli:nope"], ["--debug", "info", "sec/missing"]]
    for argv in runs:
        r = subprocess.run([sys.executable, "-m", "hubdask.cli", *argv], env=env, capture_output=True, text=True,
                           timeout=120)
        assert not leaks(r.stdout + r.stderr), argv
    assert r.returncode != 0 and "Traceback" in r.stderr  # --debug did show a traceback, still without it


def test_pickled_tasks_carry_no_secret_in_their_names(s3_root, moto_server, tmp_path, monkeypatch):
    """Dask task keys and tokens are digests; the secret only travels inside the pickled Root (to
    reopen storage in workers), never in a name the scheduler shows or logs."""
    monkeypatch.setenv("HUBDASK_CACHE", str(tmp_path / "cache"))
    opts = {"key": KEY_ID, "secret": SECRET}
    a = hd.array((4, 4), name="sec/p", dtype="int8", chunks=(2, 2), storage=s3_root, storage_options=opts)
    d = a.to_dask()
    assert not leaks(str(list(d.__dask_graph__().keys())) + d.name + repr(d))
    assert pickle.loads(pickle.dumps(a._source)).root.url == open_root(s3_root).url


def test_no_secret_in_notebooks_or_benchmark_results():
    """Committed notebook outputs and benchmark results hold no credentials: no AWS key ids, no secret
    values next to secret-like names, and none of this environment's AWS secrets."""
    env_secrets = [v for k, v in os.environ.items() if re.search(r"SECRET|TOKEN|PASSWORD", k) and len(v) >= 8]
    patterns = [re.compile(r"\bA[KS]IA[0-9A-Z]{16}\b"),
                re.compile(r"(secret_access_key|aws_secret|session_token|password)\W{1,5}[A-Za-z0-9/+=]{16,}", re.I)]
    files = [p for d in ("notebooks", "benchmarks/results", "docs") for p in (REPO / d).rglob("*") if p.is_file()]
    assert any(p.suffix == ".ipynb" for p in files), "no notebooks found: the check would be vacuous"
    found = []
    for p in files:
        text = p.read_text(errors="replace")
        found += [(p.name, pat.pattern) for pat in patterns if pat.search(text)]
        found += [(p.name, "env secret") for s in env_secrets if s in text]
    assert not found


def test_data_is_never_unpickled_from_storage():
    """No pickle, no allow_pickle, no object dtype decoding anywhere in the package."""
    hits = []
    for path in (REPO / "hubdask").rglob("*.py"):
        tree = ast.parse(path.read_text())
        for node in ast.walk(tree):
            if isinstance(node, (ast.Import, ast.ImportFrom)):
                names = [a.name for a in node.names] + [getattr(node, "module", None) or ""]
                if any(n.split(".")[0] in ("pickle", "cPickle", "dill", "cloudpickle", "joblib") for n in names):
                    hits.append(f"{path.name}: imports {names}")
            if isinstance(node, ast.keyword) and node.arg == "allow_pickle" and not (
                    isinstance(node.value, ast.Constant) and node.value.value is False):
                hits.append(f"{path.name}:{node.lineno}: allow_pickle")
    assert not hits
    with pytest.raises(TypeError, match="numeric"):
        hd.array((2,), name="sec/obj", dtype=object, storage="memory://sec-obj")


def test_viewer_binds_localhost():
    from hubdask.viz import server

    assert server.HOST == "127.0.0.1"


def test_password_inside_a_root_url_never_shows(tmp_path, monkeypatch, caplog):
    """``ftp://alice:SECRET@host/hub``: the password opens the store and appears in no repr, error, log
    or CLI output (names keep their URL, less ``user:password@``)."""
    import socket

    from hubdask.names import parse

    with socket.socket() as s:  # a closed port: every connection is refused at once
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    url = f"ftp://alice:{SECRET}@127.0.0.1:{port}/hub"
    env = {"HUBDASK_RETRIES": "0", "HUBDASK_RETRY_TIMEOUT": "10", "HUBDASK_CACHE": str(tmp_path / "cache")}
    for k, v in env.items():
        monkeypatch.setenv(k, v)
    caplog.set_level(logging.DEBUG)
    root = open_root(url)
    seen = [repr(root), root.url, root.token, str(parse(f"{url}/ds:v1")), repr(parse(f"{url}/ds").path)]
    assert root.url == f"ftp://127.0.0.1:{port}/hub" and "alice" not in repr(root)
    attempts = [lambda: hd.ls(storage=url), lambda: hd.load(f"{url}/ds"), lambda: hd.load(f"{url}/d s"),
                lambda: hd.array((2,), name=f"{url}/ds"), lambda: hd.load("o/ds", storage=url)]
    for attempt in attempts:
        with pytest.raises((hd.StorageError, hd.InvalidNameError, hd.NotFoundError)) as info:
            attempt()
        seen += [str(info.value), repr(info.value)]
    for argv in (["ls", "--storage", url], ["info", f"{url}/ds"], ["info", f"{url}/d s"], ["ls", "-l", "--storage", url]):
        r = subprocess.run([sys.executable, "-m", "hubdask.cli", *argv], env={**os.environ, **env},
                           capture_output=True, text=True, timeout=120)
        assert r.returncode != 0 and r.stderr.startswith("hubdask: error: ") and "127.0.0.1" in r.stderr, r.stderr
        seen += [r.stdout, r.stderr]
    seen.append(caplog.text)
    assert not [s for s in seen if leaks(s)], [s for s in seen if leaks(s)]
