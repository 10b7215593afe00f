"""The [cluster] settings and the startup identity checks: a bad cluster
configuration, a data directory of another node, or one holding rooms another
node owns, each exit with status 2 and one line."""

import subprocess
import tempfile

import pytest

from conftest import base_env
from helpers import HOST, free_port, mint_token

CLUSTER_SECRET = "e2e-cluster-secret-0123456789"


def run_serve(roomcast_bin, args, env=None, timeout=20):
    """`roomcast serve ARGS`, expected to exit by itself; a server that keeps
    running is killed at `timeout` and reported."""
    cwd = tempfile.mkdtemp(prefix="rc-cluster-")  # keep ./data out of the repository
    try:
        return subprocess.run(
            [roomcast_bin, "serve", *args],
            env=base_env(env),
            cwd=cwd,
            capture_output=True,
            text=True,
            timeout=timeout,
        )
    except subprocess.TimeoutExpired as e:
        out = (e.stderr or b"").decode("utf-8", "replace") if isinstance(e.stderr, bytes) else (e.stderr or "")
        pytest.fail(f"roomcast serve {' '.join(args)} kept running instead of exiting 2:\n{out}", pytrace=False)


def cluster_toml(node_id="a", nodes=("a", "b"), extra=""):
    """A [cluster] table with ipc addresses under a fresh directory."""
    sock_dir = tempfile.mkdtemp(prefix="rc-ipc-")
    entries = ",\n".join(f'  {{ id = "{n}", addr = "ipc://{sock_dir}/{n}.ipc" }}' for n in nodes)
    return f'[cluster]\nnode-id = "{node_id}"\nnodes = [\n{entries},\n]\n{extra}'


def one_error_line(r, *parts):
    """Exit 2 with exactly one line of output, containing every one of `parts`."""
    out = r.stderr + r.stdout
    assert r.returncode == 2, f"exit {r.returncode}, output:\n{out}"
    lines = [l for l in out.splitlines() if l.strip()]
    assert len(lines) == 1, f"expected one line, got:\n{out}"
    for part in parts:
        assert part in lines[0], f"{part!r} not in {lines[0]!r}"
    assert lines[0].startswith("roomcast: "), lines[0]
    return lines[0]


@pytest.mark.parametrize(
    "toml,flags,env,parts",
    [
        (cluster_toml(extra="bogus = 1\n"), [], {"ROOMCAST_CLUSTER_SECRET": CLUSTER_SECRET}, ["bogus", "[cluster]"]),
        (cluster_toml(node_id="z"), [], {"ROOMCAST_CLUSTER_SECRET": CLUSTER_SECRET}, ["cluster.node-id", '"z"']),
        (cluster_toml(), [], {"ROOMCAST_CLUSTER_SECRET": "short"}, ["cluster.secret", "16 bytes"]),
        (cluster_toml(), [], {}, ["cluster.secret", "ROOMCAST_CLUSTER_SECRET"]),
        (cluster_toml(nodes=("a", "a")), [], {"ROOMCAST_CLUSTER_SECRET": CLUSTER_SECRET}, ["listed twice"]),
        ("", ["--cluster-node-id", "a"], {}, ["cluster-node-id", "[cluster]"]),
        (
            cluster_toml(),
            ["--cluster-down-after", "10ms"],
            {"ROOMCAST_CLUSTER_SECRET": CLUSTER_SECRET},
            ["cluster-down-after", "100ms"],
        ),
    ],
    ids=["unknown-key", "node-id-not-a-node", "short-secret", "no-secret", "duplicate-id", "flag-alone", "down-after"],
)
def test_bad_cluster_config_exits_2_with_one_line(roomcast_bin, tmp_path, toml, flags, env, parts):
    args = ["--data", str(tmp_path / "data"), "--listen", f"{HOST}:{free_port()}", *flags]
    if toml:
        cfg = tmp_path / "roomcast.toml"
        cfg.write_text(toml)
        args += ["--config", str(cfg)]
    r = run_serve(roomcast_bin, args, env=env)
    one_error_line(r, "config:", *parts)


def test_a_data_directory_of_another_node_is_refused(roomcast_bin, tmp_path):
    data = tmp_path / "data"
    data.mkdir()
    (data / "node-id").write_text("b\n")
    cfg = tmp_path / "roomcast.toml"
    cfg.write_text(cluster_toml(node_id="a", nodes=("a", "b")))
    args = ["--data", str(data), "--listen", f"{HOST}:{free_port()}", "--config", str(cfg)]
    r = run_serve(roomcast_bin, args, env={"ROOMCAST_CLUSTER_SECRET": CLUSTER_SECRET})
    line = r.stderr + r.stdout
    assert r.returncode == 2, f"exit {r.returncode}, output:\n{line}"
    assert f"data directory {data} belongs to node b, not a" in line, line
    assert (data / "node-id").read_text() == "b\n", "the directory still belongs to b"


def test_a_data_directory_holding_rooms_of_another_node_is_refused(roomcast_bin, tmp_path, start_server):
    # Rooms written by a single node; under two nodes, some belong to b.
    data = tmp_path / "data"
    srv = start_server("--send-rate", "0", data_dir=data)
    headers = {"Authorization": f"Bearer {mint_token('ann')}"}
    rooms = [f"cluster-room-{i}" for i in range(20)]
    for room in rooms:
        r = srv.request("POST", f"/v1/rooms/{room}/messages", body={"body": 1}, headers=headers)
        assert r.status == 201, r
    assert srv.stop(15) == 0
    srv.exit_checked = True

    cfg = tmp_path / "roomcast.toml"
    cfg.write_text(cluster_toml(node_id="a", nodes=("a", "b")))
    args = ["--data", str(data), "--listen", f"{HOST}:{free_port()}", "--config", str(cfg)]
    r = run_serve(roomcast_bin, args, env={"ROOMCAST_CLUSTER_SECRET": CLUSTER_SECRET})
    out = r.stderr + r.stdout
    assert r.returncode == 2, f"exit {r.returncode}, output:\n{out}"
    lines = [l for l in out.splitlines() if "does not own" in l]
    assert len(lines) == 1, out
    assert "(owned by node b)" in lines[0] and "cluster-room-" in lines[0], lines[0]
    assert not (data / "node-id").exists(), "a refused start does not claim the directory"
