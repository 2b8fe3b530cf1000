"""deploy/: the local cluster script runs end to end (moto + `dask scheduler` + two `dask worker`
processes), and the compose file and Kubernetes values are well-formed and keep secrets out."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

DEPLOY = Path(__file__).resolve().parent.parent / "deploy"


def test_local_cluster_writes_and_reads_through_two_workers(tmp_path):
    r = subprocess.run([sys.executable, str(DEPLOY / "local_cluster.py"), "--keep-logs", str(tmp_path)],
                       capture_output=True, text=True, timeout=400, env={**os.environ, "HUBDASK_PROGRESS": "off"})
    assert r.returncode == 0, r.stdout + r.stderr
    out = r.stdout
    assert "cluster: 2 workers" in out and "written by 2 workers" in out and "every value" in out
    assert "local cluster check: OK" in out
    pids = [int(p) for p in re.findall(r"started \S+ \(pid (\d+)\)", out)]
    assert len(pids) == 4 and len(re.findall(r"stopped \S+ \(pid \d+\)", out)) == 4
    for pid in pids:  # everything it started is gone
        with pytest.raises(ProcessLookupError):
            os.kill(pid, 0)
    assert "change-me-please" not in out + r.stderr  # the secret from the env file is never printed


def test_compose_file_layout_and_no_secrets():
    text = (DEPLOY / "docker-compose.yml").read_text()
    compose = yaml.safe_load(text)
    services = compose["services"]
    assert {"minio", "scheduler", "worker-1", "worker-2", "jupyter"} <= set(services)
    for name in ("minio", "scheduler", "worker-1", "worker-2", "jupyter"):
        assert "healthcheck" in services[name], name
        assert services[name]["env_file"] == "hubdask.env", name
    for name in ("scheduler", "worker-1", "worker-2", "jupyter"):
        assert services[name]["build"]["dockerfile"] == "deploy/Dockerfile"
    assert not re.search(r"(SECRET|PASSWORD)[A-Z_]*\s*[:=]\s*[^$\s\"']", text), "secrets belong in hubdask.env"
    example = (DEPLOY / "hubdask.env.example").read_text()
    assert "HUBDASK_ROOT=s3://" in example and "AWS_SECRET_ACCESS_KEY=" in example


def test_compose_config_validates_with_docker():
    docker = shutil.which("docker")
    if docker is None:
        pytest.skip("no docker CLI on this machine: `docker compose config` cannot run")
    if subprocess.run([docker, "compose", "version"], capture_output=True).returncode != 0:
        pytest.skip("the docker CLI here has no compose plugin: `docker compose config` cannot run")
    env_file = DEPLOY / "hubdask.env"
    made = not env_file.exists()
    if made:
        shutil.copy(DEPLOY / "hubdask.env.example", env_file)
    try:
        r = subprocess.run([docker, "compose", "-f", str(DEPLOY / "docker-compose.yml"), "config", "--quiet"],
                           capture_output=True, text=True, timeout=60)
    finally:
        if made:
            env_file.unlink()
    assert r.returncode == 0, r.stderr


def test_kubernetes_values_take_s3_settings_from_the_secret():
    values = yaml.safe_load((DEPLOY / "kubernetes" / "dask-values.yaml").read_text())
    secret = yaml.safe_load((DEPLOY / "kubernetes" / "hubdask-s3-secret.example.yaml").read_text())
    assert secret["kind"] == "Secret" and {"AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "HUBDASK_ROOT"} <= set(
        secret["stringData"])
    for part in ("scheduler", "worker", "jupyter"):
        env = {e["name"]: e for e in values[part]["env"]}
        for key in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "HUBDASK_ROOT"):
            assert env[key]["valueFrom"]["secretKeyRef"]["name"] == secret["metadata"]["name"], (part, key)
    assert values["worker"]["replicas"] == 2
