"""The latency and queue histograms of /metrics, read as Prometheus would:
publish to commit, commit to first write, outbound queue bytes."""

import re

import pytest

FAMILIES = ["roomcast_publish_commit_seconds", "roomcast_commit_first_write_seconds", "roomcast_outbound_queue_bytes"]


def histograms(text):
    """{family: {"buckets": [(le, cumulative)], "count": n, "sum": s}}, summed over reactors."""
    out = {f: {"buckets": {}, "count": 0, "sum": 0.0} for f in FAMILIES}
    for f in FAMILIES:
        assert f"# TYPE {f} histogram" in text, f
        for m in re.finditer(rf'^{f}_bucket{{reactor="\d+",le="([^"]+)"}} (\d+)$', text, re.M):
            le = float("inf") if m.group(1) == "+Inf" else float(m.group(1))
            out[f]["buckets"][le] = out[f]["buckets"].get(le, 0) + int(m.group(2))
        for m in re.finditer(rf'^{f}_count{{reactor="\d+"}} (\d+)$', text, re.M):
            out[f]["count"] += int(m.group(1))
        for m in re.finditer(rf'^{f}_sum{{reactor="\d+"}} (\S+)$', text, re.M):
            out[f]["sum"] += float(m.group(1))
        out[f]["buckets"] = sorted(out[f]["buckets"].items())
    return out


def traffic(srv, room, n):
    a, b = srv.ws("ann"), srv.ws("bob")
    try:
        a.join(room)
        b.join(room)
        for i in range(n):
            assert a.call("send", room=room, body={"i": i}).get("op") == "ack"
        for i in range(n):
            b.wait(op="msg", room=room)
    finally:
        a.close()
        b.close()


@pytest.mark.parametrize("durability", ["immediate", "none"])
def test_histograms_count_what_happened(start_server, durability):
    srv = start_server("--durability", durability)
    traffic(srv, "hist-room", 30)
    h = histograms(srv.request("GET", "/metrics").text)
    pc, cw, q = (h[f] for f in FAMILIES)
    assert pc["count"] == 30, pc
    assert cw["count"] >= 1 and q["count"] >= 2, (cw, q)
    for fam in (pc, cw, q):
        les = [le for le, _ in fam["buckets"]]
        counts = [c for _, c in fam["buckets"]]
        assert les[-1] == float("inf") and counts[-1] == fam["count"], fam
        assert counts == sorted(counts), fam  # cumulative
        assert fam["sum"] > 0, fam
    assert [le for le, _ in pc["buckets"]][:2] == [0.00005, 0.0001]
    assert [le for le, _ in pc["buckets"]][-2] == 5.0
    # Every commit of these small messages took less than 5 s, and the
    # mean is the sum over the count.
    assert pc["buckets"][-2][1] == 30 and pc["sum"] / pc["count"] < 5


def test_histograms_off(start_server):
    srv = start_server("--metrics-histograms=false")
    traffic(srv, "hist-off", 10)
    h = histograms(srv.request("GET", "/metrics").text)
    assert all(h[f]["count"] == 0 for f in FAMILIES), h
