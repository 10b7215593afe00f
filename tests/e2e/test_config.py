"""Command line, environment and TOML config; `roomcast token`."""

import base64
import json
import re
import subprocess
import tempfile
import time

import pytest

from conftest import base_env
from helpers import HOST, free_port


def run_bin(roomcast_bin, args, env=None, cwd=None, timeout=10):
    cwd = cwd or tempfile.mkdtemp(prefix="rc-cli-")  # keep ./data out of the repository
    return subprocess.run(
        [roomcast_bin, *args], env=base_env(env), cwd=cwd, capture_output=True, text=True, timeout=timeout
    )


def norm(s: str) -> str:
    return s.lower().replace("_", "-")


def assert_config_error(r, key):
    out = r.stderr + r.stdout
    assert r.returncode == 2, f"exit {r.returncode}, output:\n{out}"
    lines = [l for l in out.splitlines() if norm(key) in norm(l)]
    assert lines, f"no line names {key!r}:\n{out}"


@pytest.mark.parametrize(
    "flags,key",
    [
        (["--threads", "abc"], "threads"),
        (["--max-message-bytes", "lots"], "max-message-bytes"),
        (["--listen", "not-an-address"], "listen"),
        (["--send-rate=-5"], "send-rate"),
        (["--idle-timeout", "soon"], "idle-timeout"),
    ],
    ids=["threads-abc", "max-message-bytes", "listen", "send-rate", "idle-timeout"],
)
def test_bad_flag_value_exit_2(roomcast_bin, tmp_path, flags, key):
    r = run_bin(roomcast_bin, ["serve", "--data", str(tmp_path), *flags])
    assert_config_error(r, key)


def test_bad_env_value_exit_2(roomcast_bin, tmp_path):
    r = run_bin(roomcast_bin, ["serve", "--data", str(tmp_path)], env={"ROOMCAST_THREADS": "many"})
    assert_config_error(r, "threads")


def test_unknown_toml_key_exit_2(roomcast_bin, tmp_path):
    cfg = tmp_path / "roomcast.toml"
    cfg.write_text('listen = "127.0.0.1:1"\nno_such_key = 1\n')
    r = run_bin(roomcast_bin, ["serve", "--data", str(tmp_path), "--config", str(cfg)])
    assert_config_error(r, "no_such_key")


def test_bad_toml_value_exit_2(roomcast_bin, tmp_path):
    cfg = tmp_path / "roomcast.toml"
    cfg.write_text('threads = "many"\n')
    r = run_bin(roomcast_bin, ["serve", "--data", str(tmp_path), "--config", str(cfg)])
    assert_config_error(r, "threads")


def test_toml_syntax_error_exit_2(roomcast_bin, tmp_path):
    cfg = tmp_path / "roomcast.toml"
    cfg.write_text("listen = \n")
    r = run_bin(roomcast_bin, ["serve", "--data", str(tmp_path), "--config", str(cfg)])
    assert r.returncode == 2, r
    assert (r.stderr + r.stdout).strip(), "no message"


def test_missing_config_file_exit_2(roomcast_bin, tmp_path):
    r = run_bin(roomcast_bin, ["serve", "--data", str(tmp_path), "--config", str(tmp_path / "nope.toml")])
    assert r.returncode == 2, r
    assert "nope.toml" in r.stderr + r.stdout


def test_env_listen(start_server):
    port = free_port()
    srv = start_server(listen=False, port=port, env={"ROOMCAST_LISTEN": f"{HOST}:{port}"})
    assert srv.request("GET", "/healthz").status == 200
    assert f"{HOST}:{port}" in srv.output()


def test_env_flag(start_server, room):
    srv = start_server(env={"ROOMCAST_ANONYMOUS": "true"})
    c = srv.ws(None, query="user=env-anon")
    c.join(room)
    c.close()


def test_config_file(start_server, tmp_path, room):
    port = free_port()
    cfg = tmp_path / "roomcast.toml"
    cfg.write_text(f'listen = "{HOST}:{port}"\nanonymous = true\n')
    srv = start_server("--config", str(cfg), listen=False, port=port)
    c = srv.ws(None, query="user=file-anon")
    assert c.call("ping")["op"] == "pong"
    c.close()


def test_precedence_flag_over_env_over_file(start_server, tmp_path):
    p_file, p_env, p_flag = free_port(), free_port(), free_port()
    cfg = tmp_path / "roomcast.toml"
    cfg.write_text(f'listen = "{HOST}:{p_file}"\n')
    srv = start_server("--config", str(cfg), listen=False, port=p_env, env={"ROOMCAST_LISTEN": f"{HOST}:{p_env}"})
    assert srv.request("GET", "/healthz").status == 200
    srv2 = start_server("--config", str(cfg), "--listen", f"{HOST}:{p_flag}", listen=False, port=p_flag,
                        env={"ROOMCAST_LISTEN": f"{HOST}:{p_env + 1}"})
    assert srv2.request("GET", "/healthz").status == 200


def jwt_claims(tok):
    payload = tok.split(".")[1]
    return json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))


def find_jwt(text):
    m = re.findall(r"eyJ[A-Za-z0-9_-]+\.[A-Za-z0-9_-]+\.[A-Za-z0-9_-]+", text)
    return m[-1] if m else None


def test_token_command(roomcast_bin, start_server, room):
    r = run_bin(roomcast_bin, ["token", "--sub", "cli-user"])
    assert r.returncode == 0, r
    tok = find_jwt(r.stdout)
    assert tok and r.stdout.strip() == tok, f"stdout should be just the token: {r.stdout!r}"
    claims = jwt_claims(tok)
    assert claims["sub"] == "cli-user" and claims["exp"] > time.time()
    srv = start_server()
    c = srv.ws(None, token=tok)
    c.join(room)
    c.call("send", room=room, body="hi")
    assert c.wait(op="msg", room=room)["from"] == "cli-user"
    c.close()


def test_token_ttl(roomcast_bin):
    r = run_bin(roomcast_bin, ["token", "--sub", "x", "--ttl", "120"])
    assert r.returncode == 0, r
    claims = jwt_claims(find_jwt(r.stdout))
    assert abs(claims["exp"] - (time.time() + 120)) < 10, claims


def test_secret_kept_in_data_dir(roomcast_bin, start_server, tmp_path, room):
    """Without ROOMCAST_JWT_SECRET a secret is made in ./data and shared by `serve` and `token`;
    `serve` prints a link to the built-in page with a ready token."""
    env = {"ROOMCAST_JWT_SECRET": None}
    srv = start_server(env=env, data_dir=False, cwd=tmp_path, threads=1)
    time.sleep(0.3)
    out = srv.output()
    assert re.search(rf"http://(127\.0\.0\.1|localhost):{srv.port}/\S*", out), f"no link to the page:\n{out}"
    page_tok = find_jwt(out)
    assert page_tok, f"no token printed:\n{out}"
    c = srv.ws(None, token=page_tok)
    assert c.call("ping")["op"] == "pong"
    c.close()
    assert (tmp_path / "data").is_dir(), "default data directory ./data not created"
    r = run_bin(roomcast_bin, ["token", "--sub", "local"], env=env, cwd=tmp_path)
    assert r.returncode == 0, r
    tok = find_jwt(r.stdout)
    c = srv.ws(None, token=tok)
    c.join(room)
    c.call("send", room=room, body="hi")
    assert c.wait(op="msg", room=room)["from"] == "local"
    c.close()
    # A token made elsewhere (another secret) is refused.
    other = run_bin(roomcast_bin, ["token", "--sub", "local"], env={"ROOMCAST_JWT_SECRET": "a-different-secret-of-32-bytes-or-more"})
    assert other.returncode == 0, other
    status = srv.request("GET", "/v1/ws", headers={
        "Upgrade": "websocket", "Connection": "Upgrade", "Sec-WebSocket-Version": "13",
        "Sec-WebSocket-Key": "dGhlIHNhbXBsZSBub25jZQ==", "Authorization": f"Bearer {find_jwt(other.stdout)}"}).status
    assert status == 401
