"""The room endpoints over HTTP: publish, history paging, presence, auth and validation."""

import time

import pytest

from helpers import assert_json_error, mint_token


def auth(user="ann", **kw):
    return {"Authorization": f"Bearer {mint_token(user, **kw)}"}


def post(server, room, body, user="ann", headers=None):
    h = auth(user) if headers is None else headers
    return server.request("POST", f"/v1/rooms/{room}/messages", body=body, headers=h)


def seqs(page):
    return [m["seq"] for m in page["messages"]]


def test_post_201(server, room):
    before = int(time.time() * 1000)
    r = post(server, room, {"body": {"text": "hello"}})
    assert r.status == 201, r
    assert r.header("content-type", "").startswith("application/json")
    doc = r.json()
    assert doc["room"] == room and doc["seq"] == 1
    assert before - 5000 <= doc["ts"] <= int(time.time() * 1000) + 5000, doc
    r2 = post(server, room, {"body": "again"})
    assert r2.status == 201 and r2.json()["seq"] == 2


def test_post_delivered_to_ws_members(server, room):
    c = server.ws("bo")
    c.join(room)
    r = post(server, room, {"body": {"n": 1}, "id": "http-1"}, user="ann")
    assert r.status == 201, r
    m = c.wait(op="msg", room=room)
    assert m["seq"] == r.json()["seq"] and m["ts"] == r.json()["ts"]
    assert m["from"] == "ann" and m["body"] == {"n": 1} and m.get("id") == "http-1"
    c.close()


def test_post_dedup(server, room):
    r1 = post(server, room, {"body": "x", "id": "dup-1"})
    time.sleep(0.01)
    r2 = post(server, room, {"body": "y", "id": "dup-1"})
    assert r1.status == 201 and r2.status == 201, (r1, r2)
    assert r1.json()["seq"] == r2.json()["seq"]
    assert r1.json()["ts"] == r2.json()["ts"]
    r3 = post(server, room, {"body": "z", "id": "dup-2"})
    assert r3.json()["seq"] == r1.json()["seq"] + 1, "a deduplicated post must not take a seq"
    page = server.request("GET", f"/v1/rooms/{room}/messages", headers=auth()).json()
    assert [m["body"] for m in page["messages"]] == ["x", "z"]


def test_history_paging(server, room):
    for i in range(1, 11):
        assert post(server, room, {"body": i}).status == 201

    def get(q):
        r = server.request("GET", f"/v1/rooms/{room}/messages?{q}", headers=auth())
        assert r.status == 200, r
        return r.json()

    page = get("limit=3")
    assert seqs(page) == [8, 9, 10] and page["more"] is True, page
    assert [m["body"] for m in page["messages"]] == [8, 9, 10]
    for m in page["messages"]:
        assert "op" not in m and m["from"] == "ann" and isinstance(m["ts"], int)
    page = get("before=8&limit=3")
    assert seqs(page) == [5, 6, 7] and page["more"] is True, page
    page = get("before=3&limit=3")
    assert seqs(page) == [1, 2] and page["more"] is False, page
    page = get("after=0&limit=4")
    assert seqs(page) == [1, 2, 3, 4] and page["more"] is True, page
    page = get("after=8&limit=4")
    assert seqs(page) == [9, 10] and page["more"] is False, page
    page = get("after=2&before=9&limit=3")
    assert seqs(page) == [3, 4, 5] and page["more"] is True, page
    page = get("")
    assert seqs(page) == list(range(1, 11)) and page["more"] is False, page
    page = get("after=10")
    assert seqs(page) == [] and page["more"] is False, page


def test_history_limit_clamped(server, room):
    for i in range(3):
        post(server, room, {"body": i})
    r = server.request("GET", f"/v1/rooms/{room}/messages?limit=0", headers=auth())
    # limit is clamped to 1..1000 (an error would also be defensible; clamping is the contract)
    assert r.status == 200, r
    assert seqs(r.json()) == [3]
    r = server.request("GET", f"/v1/rooms/{room}/messages?limit=5000", headers=auth())
    assert r.status == 200 and seqs(r.json()) == [1, 2, 3]


def test_history_bad_query(server, room):
    r = server.request("GET", f"/v1/rooms/{room}/messages?after=abc", headers=auth())
    assert_json_error(r, 400, "bad_request")


def test_presence(server, room):
    r = server.request("GET", f"/v1/rooms/{room}/presence", headers=auth())
    assert r.status == 200, r
    assert r.json() == {"room": room, "members": []}
    c1, c2 = server.ws("ann"), server.ws("bo")
    c1.join(room)
    c2.join(room)
    doc = server.request("GET", f"/v1/rooms/{room}/presence", headers=auth()).json()
    assert doc["room"] == room
    assert sorted(m["user"] for m in doc["members"]) == ["ann", "bo"], doc
    for m in doc["members"]:
        assert isinstance(m["since"], int)
    c1.close()
    c2.close()


def test_post_unauthorized(server, room):
    r = post(server, room, {"body": 1}, headers={})
    assert_json_error(r, 401, "unauthorized")
    r = post(server, room, {"body": 1}, headers={"Authorization": "Bearer not.a.jwt"})
    assert_json_error(r, 401, "unauthorized")
    bad_sig = mint_token("ann", secret="wrong-secret")
    r = post(server, room, {"body": 1}, headers={"Authorization": f"Bearer {bad_sig}"})
    assert_json_error(r, 401, "unauthorized")
    expired = mint_token("ann", ttl=-3600)
    r = post(server, room, {"body": 1}, headers={"Authorization": f"Bearer {expired}"})
    assert_json_error(r, 401, "unauthorized")


@pytest.mark.parametrize("bad", ["a" * 129, "no!pe", "sp%20ace"])
def test_bad_room_name(server, bad):
    r = post(server, bad, {"body": 1})
    assert_json_error(r, 400, "bad_request")
    r = server.request("GET", f"/v1/rooms/{bad}/messages", headers=auth())
    assert_json_error(r, 400, "bad_request")


def test_longest_room_name_ok(server):
    name = "R" * 128
    r = post(server, name, {"body": 1})
    assert r.status == 201, r
    assert r.json()["room"] == name


@pytest.mark.parametrize(
    "raw", [b"{not json", b"[1,2]", b"{}", b'{"body": 1, "id": "' + b"i" * 65 + b'"}'],
    ids=["syntax", "array", "no-body", "long-id"],
)
def test_bad_json(server, room, raw):
    r = post(server, room, raw)
    assert_json_error(r, 400, "bad_request")


def test_anonymous_post(start_server, room):
    srv = start_server("--anonymous")
    r = srv.request("POST", f"/v1/rooms/{room}/messages?user=zoe", body={"body": 1})
    assert r.status == 201, r
    r = srv.request("POST", f"/v1/rooms/{room}/messages", body={"body": 2})
    assert r.status == 201, r
    page = srv.request("GET", f"/v1/rooms/{room}/messages").json()
    assert [m["from"] for m in page["messages"]] == ["zoe", "anonymous"], page
