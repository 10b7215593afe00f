"""Fixtures: the roomcast binary, servers on free ports, and their orderly shutdown.

- `roomcast_bin`: path of the binary (ROOMCAST_BIN, else target/release/roomcast,
  built once with `cargo build --release` when missing).
- `start_server(*flags, env=None, listen=True, data_dir=None)`: starts
  `roomcast serve --listen 127.0.0.1:PORT --data DIR --threads 2 FLAGS...` with
  ROOMCAST_JWT_SECRET=helpers.SECRET (32 bytes or more) and waits until it listens; every server it
  started is stopped with SIGTERM at teardown, and the test fails unless it exits 0
  within 15 s.
- `server`: one shared server per test module with the default flags plus
  `--send-rate 0`. Tests use their own room names so they do not disturb one
  another.
"""

from __future__ import annotations

import os
import pathlib
import subprocess
import sys
import tempfile

import pytest

sys.path.insert(0, os.path.dirname(__file__))

from helpers import SECRET, Server, free_port  # noqa: E402

REPO = pathlib.Path(__file__).resolve().parents[2]
LOG_DIR = REPO / "target" / "e2e-logs"


@pytest.fixture(scope="session")
def roomcast_bin() -> str:
    if os.environ.get("ROOMCAST_BUILD_FAILED"):
        pytest.fail("cargo build failed; no binary to test", pytrace=False)
    env_bin = os.environ.get("ROOMCAST_BIN")
    if env_bin:
        path = pathlib.Path(env_bin)
        if not path.is_absolute():
            path = REPO / path
        if not path.exists():
            pytest.fail(f"ROOMCAST_BIN={env_bin} does not exist", pytrace=False)
        return str(path)
    path = REPO / "target" / "release" / "roomcast"
    if not path.exists():
        r = subprocess.run(["cargo", "build", "--release", "--quiet"], cwd=REPO)
        if r.returncode != 0 or not path.exists():
            pytest.fail("cargo build --release failed", pytrace=False)
    return str(path)


def base_env(extra=None) -> dict:
    env = {k: v for k, v in os.environ.items() if not k.startswith("ROOMCAST_")}
    env["ROOMCAST_JWT_SECRET"] = SECRET
    env.setdefault("RUST_BACKTRACE", "1")
    if extra:
        for k, v in extra.items():
            if v is None:
                env.pop(k, None)
            else:
                env[k] = v
    return env


class ServerFactory:
    def __init__(self, binary, tmp_root: pathlib.Path, name: str):
        self.binary = binary
        self.tmp_root = tmp_root
        self.name = name
        self.servers: list[Server] = []

    def __call__(self, *flags, env=None, listen=True, port=None, data_dir=None, cwd=None, threads=2,
                 wait=True) -> Server:
        """Starts a server. `listen=False` leaves --listen out (the port then comes from env or
        config: pass it as `port` so readiness is checked there); `data_dir=False` leaves --data out."""
        port = port or free_port()
        args = ["serve"]
        if listen:
            args += ["--listen", f"127.0.0.1:{port}"]
        if data_dir is None:
            data_dir = tempfile.mkdtemp(prefix="data-", dir=self.tmp_root)
        if data_dir is not False:
            args += ["--data", str(data_dir)]
        if threads is not None and "--threads" not in flags:
            args += ["--threads", str(threads)]
        args += [str(f) for f in flags]
        LOG_DIR.mkdir(parents=True, exist_ok=True)
        log = LOG_DIR / f"{self.name}-{len(self.servers)}.log"
        srv = Server(self.binary, args, base_env(env), data_dir, port, str(log), cwd=cwd)
        self.servers.append(srv)
        if wait:
            try:
                srv.wait_ready(15)
            except RuntimeError:
                srv.exit_checked = True  # reported here; teardown need not repeat it
                raise
        return srv

    def finish(self):
        problems = []
        for srv in self.servers:
            if srv.exit_checked:
                srv.stop(5)
                continue
            code = srv.stop(15)
            if code != 0:
                tail = "\n".join(srv.output().splitlines()[-15:])
                what = "did not exit within 15 s of SIGTERM" if code is None else f"exited with {code}"
                problems.append(f"server {' '.join(srv.args)} {what}; output tail:\n{tail}")
        if problems:
            pytest.fail("\n\n".join(problems), pytrace=False)


def _safe(name: str) -> str:
    return "".join(c if c.isalnum() or c in "-_." else "_" for c in name)[:80]


@pytest.fixture
def start_server(roomcast_bin, tmp_path, request):
    factory = ServerFactory(roomcast_bin, tmp_path, _safe(request.node.name))
    yield factory
    factory.finish()


@pytest.fixture(scope="module")
def module_servers(roomcast_bin, tmp_path_factory, request):
    """Like `start_server`, but the servers live for the whole module."""
    factory = ServerFactory(roomcast_bin, tmp_path_factory.mktemp("msrv"), _safe(request.module.__name__) + "-m")
    yield factory
    factory.finish()


@pytest.fixture(scope="module")
def server(roomcast_bin, tmp_path_factory, request):
    factory = ServerFactory(roomcast_bin, tmp_path_factory.mktemp("srv"), _safe(request.module.__name__))
    srv = factory("--send-rate", "0")
    yield srv
    factory.finish()


_room_counter = [0]


@pytest.fixture
def room(request) -> str:
    """A room name unique to this test."""
    _room_counter[0] += 1
    return f"t{_room_counter[0]}-{_safe(request.node.name)[:60].replace('[', '_').replace(']', '_')}"


def pytest_terminal_summary(terminalreporter):
    """Prints the Autobahn summary (when that test ran) just before pytest's own summary line."""
    try:
        import test_autobahn
    except ImportError:
        return
    for line in getattr(test_autobahn, "SUMMARY", []):
        terminalreporter.write_line(line)
