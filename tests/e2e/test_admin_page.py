"""The admin page at /admin in headless Chromium: its charts move while a
load runs, its tables show the busiest rooms, and its forms publish and
disconnect through the server API. A screenshot goes to target/admin.png."""

import json
import os
import pathlib
import sys
import threading
import time

import pytest

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent))
from cdp import CHROMIUM, Browser  # noqa: E402

from helpers import mint_token  # noqa: E402

ROOT = pathlib.Path(__file__).resolve().parents[2]

pytestmark = pytest.mark.skipif(
    not os.path.exists(CHROMIUM),
    reason=f"{CHROMIUM} is missing (scripts/test.sh installs it with apt-get install chromium)",
)


def open_admin(browser, srv, token):
    # From a blank page: from /admin itself, a new fragment alone would not
    # load the document again.
    browser.page("Page.navigate", url="about:blank")
    browser.wait_for("location.href === 'about:blank'")
    url = f"{srv.http_base}/admin#token={token}"
    res = browser.page("Page.navigate", url=url)
    assert not res.get("errorText"), res
    bare = json.dumps(f"{srv.http_base}/admin")
    browser.wait_for(f"location.href === {bare} && document.readyState === 'complete'")


def test_admin_page_charts_tables_and_forms(start_server):
    srv = start_server("--send-rate", "0")
    members = [srv.ws(f"m{i}") for i in range(3)]
    for m in members:
        m.join("busy-room")
    quiet = srv.ws("q")
    quiet.join("quiet-room")
    stop = threading.Event()

    def load():
        pub = srv.ws("publisher")
        try:
            i = 0
            while not stop.is_set():
                pub.send({"op": "send", "room": "busy-room", "body": {"i": i}})
                i += 1
                time.sleep(0.01)
        finally:
            pub.close()

    t = threading.Thread(target=load, daemon=True)
    t.start()
    try:
        with Browser() as b:
            open_admin(b, srv, mint_token("root", role="admin"))
            # Four polls at least: the rate charts have three points or more,
            # and the last ones are above zero while the load runs.
            b.wait_for("Number(document.querySelector('#status').dataset.polls || 0) >= 4", timeout=15)
            assert b.evaluate("Number(document.querySelector('#c-pubs').dataset.points)") >= 3
            b.wait_for("Number(document.querySelector('#c-pubs').dataset.last) > 10", timeout=10)
            b.wait_for("Number(document.querySelector('#c-dels').dataset.last) > 30", timeout=10)
            assert b.evaluate("Number(document.querySelector('#v-conns').textContent.replace(/,/g, ''))") >= 5
            top = b.evaluate("Array.from(document.querySelectorAll('#top-members tbody tr'))"
                             ".map(r => Array.from(r.cells).map(c => c.textContent))")
            assert top[0][:2] == ["busy-room", "3"], top
            rate = b.evaluate("Array.from(document.querySelectorAll('#top-rate tbody tr'))"
                              ".map(r => r.cells[0].textContent)")
            assert rate[0] == "busy-room", rate
            shot = ROOT / "target" / "admin.png"
            shot.parent.mkdir(exist_ok=True)
            b.screenshot(str(shot))
            print(f"admin page screenshot: {shot}")

            # Publish through the page's form: the quiet room's member gets it.
            b.evaluate("document.querySelector('#p-room').value = 'quiet-room'")
            b.evaluate("document.querySelector('#p-body').value = '{\"text\": \"from the admin page\"}'")
            b.click("#p-send")
            m = quiet.wait(op="msg", room="quiet-room", timeout=10)
            assert m["body"] == {"text": "from the admin page"} and m["from"] == "admin", m
            b.wait_for("document.querySelector('#result').textContent.startsWith('published quiet-room')")

            # Disconnect through the page's form.
            b.evaluate("document.querySelector('#d-user').value = 'q'")
            b.evaluate("document.querySelector('#d-reason').value = 'bye from admin'")
            b.click("#d-send")
            code, reason, _ = quiet.closed(timeout=10)
            assert (code, reason) == (4002, "bye from admin")

            # Without a token the page says how to open it.
            open_admin(b, srv, "")
            b.wait_for("document.querySelector('#status').textContent.includes('#token=')", timeout=10)
            # A token without role admin is refused by the API, and the page says so.
            open_admin(b, srv, mint_token("ann"))
            b.wait_for("document.querySelector('#status').textContent.includes('forbidden')", timeout=10)
    finally:
        stop.set()
        t.join(5)
        for m in members + [quiet]:
            m.close()


def test_admin_page_headers(start_server):
    srv = start_server()
    r = srv.request("GET", "/admin")
    assert r.status == 200 and r.header("Content-Type").startswith("text/html"), r
    csp = r.header("Content-Security-Policy")
    assert "script-src 'sha256-" in csp and "default-src 'none'" in csp, csp
    assert r.header("X-Frame-Options") == "DENY"
    assert srv.request("POST", "/admin", body=b"").status == 405
