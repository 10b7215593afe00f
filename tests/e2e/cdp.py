"""A minimal Chrome DevTools Protocol driver for headless Chromium.

Enough to load a page, run JavaScript in it, wait for a condition, type text
and take a screenshot. It speaks CDP over one browser-level WebSocket and
attaches to the page target with a flat session, so no HTTP call to /json is
needed. Console output and uncaught exceptions from the page are collected in
`Browser.console` to make failing tests readable; other events (those of a
domain a test enabled, such as `Network`) in `Browser.events`, the newest
few hundred.
"""

import base64
import collections
import contextlib
import itertools
import json
import os
import shutil
import signal
import subprocess
import tempfile
import threading
import time

from websockets.sync.client import connect

CHROMIUM = "/usr/bin/chromium"

FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--disable-dev-shm-usage",
    "--no-first-run",
    "--no-default-browser-check",
    "--remote-debugging-port=0",
]


class CDPError(RuntimeError):
    """A CDP command failed, or JavaScript threw."""


class Browser:
    """One headless Chromium with one page. Use as a context manager."""

    def __init__(self, binary=CHROMIUM, width=1100, height=720, timeout=30.0):
        self.timeout = timeout
        self.console = []
        self.events = collections.deque(maxlen=500)
        self._stderr_tail = []
        self._ids = itertools.count(1)
        self._ws = None
        self._stack = contextlib.ExitStack()
        self.profile = tempfile.mkdtemp(prefix="roomcast-chromium-")
        self.proc = subprocess.Popen(
            [binary, *FLAGS, f"--user-data-dir={self.profile}",
             f"--window-size={width},{height}", "about:blank"],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            # Its own process group, so that close() also reaches the
            # renderer and zygote processes it forks.
            start_new_session=True,
        )
        try:
            url = self._devtools_url()
            # Entered as a context manager: recent websockets versions warn
            # about a connection that is not, and older ones accept both.
            self._ws = self._stack.enter_context(
                connect(url, max_size=None, open_timeout=timeout)
            )
            targets = self.call("Target.getTargets")["targetInfos"]
            page = next((t for t in targets if t["type"] == "page"), None)
            if page is None:
                page = {"targetId": self.call("Target.createTarget", url="about:blank")["targetId"]}
            self.session = self.call(
                "Target.attachToTarget", targetId=page["targetId"], flatten=True
            )["sessionId"]
            self.page("Page.enable")
            self.page("Runtime.enable")
            self.page(
                "Emulation.setDeviceMetricsOverride",
                width=width, height=height, deviceScaleFactor=1, mobile=False,
            )
        except BaseException:
            self.close()
            raise

    def _devtools_url(self):
        """Reads `DevTools listening on ws://...` from Chromium's stderr.

        A thread keeps draining stderr afterwards: a full pipe would block
        Chromium.
        """
        found = threading.Event()
        box = {}

        def pump():
            for raw in self.proc.stderr:
                line = raw.decode("utf-8", "replace").rstrip()
                self._stderr_tail = (self._stderr_tail + [line])[-40:]
                if not found.is_set() and "DevTools listening on " in line:
                    box["url"] = line.split("DevTools listening on ", 1)[1].strip()
                    found.set()

        threading.Thread(target=pump, daemon=True).start()
        deadline = time.monotonic() + self.timeout
        while not found.wait(0.1):
            if self.proc.poll() is not None or time.monotonic() > deadline:
                raise CDPError("chromium did not start:\n" + "\n".join(self._stderr_tail))
        return box["url"]

    def call(self, method, session=None, **params):
        """Sends one CDP command and returns its result, recording events."""
        msg_id = next(self._ids)
        msg = {"id": msg_id, "method": method, "params": params}
        if session:
            msg["sessionId"] = session
        self._ws.send(json.dumps(msg))
        deadline = time.monotonic() + self.timeout
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                raise CDPError(f"{method}: no answer within {self.timeout} s")
            reply = json.loads(self._ws.recv(timeout=left))
            if reply.get("id") == msg_id:
                if "error" in reply:
                    raise CDPError(f"{method}: {reply['error']}")
                return reply.get("result", {})
            self._event(reply)

    def page(self, method, **params):
        """Sends a CDP command to the attached page."""
        return self.call(method, session=self.session, **params)

    def _event(self, ev):
        method = ev.get("method")
        params = ev.get("params", {})
        if method == "Runtime.consoleAPICalled":
            args = [a.get("value", a.get("description", "")) for a in params.get("args", [])]
            self.console.append(f"console.{params.get('type')}: " + " ".join(map(str, args)))
        elif method == "Runtime.exceptionThrown":
            d = params.get("exceptionDetails", {})
            text = d.get("exception", {}).get("description") or d.get("text")
            self.console.append(f"exception: {text}")
        elif method:
            self.events.append((method, params))

    def navigate(self, url, timeout=None):
        """Loads `url` and waits until the document has finished loading."""
        res = self.page("Page.navigate", url=url)
        if res.get("errorText"):
            raise CDPError(f"navigate {url}: {res['errorText']}")
        self.wait_for(
            f"location.href === {json.dumps(url)} && document.readyState === 'complete'",
            timeout or self.timeout,
        )

    def evaluate(self, expr):
        """Evaluates a JavaScript expression in the page, returning its value."""
        res = self.page(
            "Runtime.evaluate", expression=expr, returnByValue=True, awaitPromise=True
        )
        if "exceptionDetails" in res:
            d = res["exceptionDetails"]
            text = d.get("exception", {}).get("description") or d.get("text")
            raise CDPError(f"JavaScript threw: {text}\n  in: {expr}")
        return res.get("result", {}).get("value")

    def wait_for(self, expr, timeout=10.0, interval=0.05):
        """Polls `expr` until it is truthy in JavaScript; returns its value.

        A DOM node comes back as True: nodes have no JSON value.
        """
        probe = f"(v => [!!v, v instanceof Node ? true : v])(({expr}))"
        deadline = time.monotonic() + timeout
        last = None
        while True:
            ok, last = self.evaluate(probe)
            if ok:
                return last
            if time.monotonic() > deadline:
                raise TimeoutError(
                    f"timed out after {timeout} s waiting for: {expr}\n"
                    f"  last value: {last!r}\n  page console: {self.console[-10:]}"
                )
            time.sleep(interval)

    def click(self, selector):
        """Clicks an element through the DOM; fails if it is missing or disabled."""
        ok = self.evaluate(
            f"(() => {{ const e = document.querySelector({json.dumps(selector)});"
            " if (!e || e.disabled) return false; e.click(); return true; })()"
        )
        if not ok:
            raise CDPError(f"cannot click {selector}: missing or disabled")

    def type_text(self, selector, text):
        """Focuses an input and types `text` into it as keyboard input."""
        self.evaluate(f"document.querySelector({json.dumps(selector)}).focus()")
        self.page("Input.insertText", text=text)

    def screenshot(self, path):
        """Saves a PNG of the viewport to `path`."""
        data = self.page("Page.captureScreenshot", format="png")["data"]
        os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
        with open(path, "wb") as f:
            f.write(base64.b64decode(data))

    def close(self):
        """Stops Chromium and removes its profile directory."""
        # Ask Chromium itself first: it then stops and reaps its helper
        # processes. Signalling the whole group at once would orphan them
        # mid-shutdown.
        if self._ws is not None:
            try:
                self.call("Browser.close")
            except Exception:
                pass
        try:
            self._stack.close()
        except Exception:
            pass
        self._ws = None
        try:
            self.proc.wait(5)
        except subprocess.TimeoutExpired:
            self.proc.terminate()
            try:
                self.proc.wait(5)
            except subprocess.TimeoutExpired:
                self._signal(signal.SIGKILL)
                self.proc.wait(5)
        # Anything of the group still alive is a leftover helper.
        self._signal(signal.SIGKILL)
        shutil.rmtree(self.profile, ignore_errors=True)

    def _signal(self, sig):
        try:
            os.killpg(self.proc.pid, sig)
        except (ProcessLookupError, PermissionError):
            pass

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()
