"""Autobahn|Testsuite's fuzzingclient against GET /v1/echo (cases 1-7, 9, 10, 12, 13).

Needs Python 2.7 with the suite installed under target/autobahn-py (scripts/test.sh
does both); skipped otherwise. The report lands in target/autobahn-report.
Sections 12 and 13 are permessage-deflate (every offer the suite makes: 13.1 to 13.7).
With CI set, the slowest performance cases of section 9 are left out, and of 12 and 13
the messages over 4 KiB (cases x.y.6 to x.y.18: 1000 messages of up to 128 KiB each)
but for 12.2.9 and 12.2.14 (64 KiB slices of a bitmap, whole and in 256-byte frames);
AUTOBAHN_CASES="1.*,5.*" runs only the cases named.
"""

import json
import os
import pathlib
import shutil
import subprocess

import pytest

from helpers import mint_token

REPO = pathlib.Path(__file__).resolve().parents[2]
REPORT = REPO / "target" / "autobahn-report"
SUITE = pathlib.Path(os.environ.get("AUTOBAHN_PY", REPO / "target" / "autobahn-py"))

CASES = ["1.*", "2.*", "3.*", "4.*", "5.*", "6.*", "7.*", "9.*", "10.*", "12.*", "13.*"]
# The slowest section 9 cases: 4 MiB cut into 64-byte frames (about 2 and 5 s each of the
# roughly 35 s that all of section 9 takes here); the suite is fast enough to keep the rest.
# Of sections 12 and 13 (5 test files and 7 offers, 18 message sizes each), CI keeps the
# sizes up to 4 KiB (x.y.1 to x.y.5) for every file and every offer, and the two cases that
# once found messages coming back short (a compressor whose output buffer filled while
# input sat in its lookahead): 12.2.9 and 12.2.14.
CI_KEEP = {"12.2.9", "12.2.14"}
CI_EXCLUDE = ["9.3.1", "9.4.1"] + [c for c in (f"{s}.{f}.{i}" for s, files in ((12, 5), (13, 7))
                                               for f in range(1, files + 1) for i in range(6, 19))
                                   if c not in CI_KEEP]
PASSING = {"OK", "NON-STRICT", "INFORMATIONAL"}

# Filled in for the terminal summary (see conftest.pytest_terminal_summary).
SUMMARY: list = []


def python2():
    cand = os.environ.get("AUTOBAHN_PYTHON")
    if not cand:
        try:
            root = subprocess.run(["pyenv", "root"], capture_output=True, text=True, timeout=10).stdout.strip()
        except (OSError, subprocess.TimeoutExpired):
            root = ""
        cand = os.path.join(root, "versions", "2.7.18", "bin", "python") if root else ""
        if not os.path.exists(cand):
            cand = shutil.which("python2.7") or shutil.which("python2") or ""
    return cand if cand and os.path.exists(cand) else None


@pytest.mark.autobahn
@pytest.mark.timeout(1200)
def test_autobahn_fuzzingclient(start_server):
    py2 = python2()
    if not py2:
        pytest.skip("no Python 2.7: Autobahn|Testsuite skipped")
    if not (SUITE / "autobahntestsuite").is_dir():
        pytest.skip(f"Autobahn|Testsuite not installed in {SUITE}")
    # The queue must hold an echoed 16 MiB message.
    srv = start_server("--echo", "--max-message-bytes", "16MiB", "--max-queue-bytes", "64MiB", "--send-rate", "0",
                       "--threads", "2")
    if REPORT.exists():
        shutil.rmtree(REPORT)
    REPORT.mkdir(parents=True)
    spec = {
        "outdir": str(REPORT),
        "servers": [{"agent": "roomcast", "url": f"{srv.ws_base}/v1/echo?access_token={mint_token('autobahn')}"}],
        "cases": os.environ["AUTOBAHN_CASES"].split(",") if os.environ.get("AUTOBAHN_CASES") else CASES,
        "exclude-cases": CI_EXCLUDE if os.environ.get("CI") else [],
        "exclude-agent-cases": {},
    }
    spec_path = REPO / "target" / "autobahn-fuzzingclient.json"
    spec_path.write_text(json.dumps(spec, indent=2))
    log = REPO / "target" / "autobahn.log"
    env = dict(os.environ, AUTOBAHN_PY=str(SUITE))
    with open(log, "w") as out:
        r = subprocess.run(
            [py2, str(REPO / "scripts" / "wstest.py"), "-m", "fuzzingclient", "-s", str(spec_path)],
            cwd=REPO / "target", env=env, stdout=out, stderr=subprocess.STDOUT, timeout=1100,
        )
    index = REPORT / "index.json"
    assert index.exists(), f"wstest exited {r.returncode} without a report; see {log}:\n{log.read_text()[-3000:]}"
    results = json.loads(index.read_text())["roomcast"]
    counts: dict = {}
    failures = []
    for case, res in sorted(results.items(), key=lambda kv: [int(x) for x in kv[0].split(".")]):
        b, bc = res.get("behavior"), res.get("behaviorClose")
        counts[b] = counts.get(b, 0) + 1
        if b not in PASSING or bc not in PASSING:
            failures.append(f"{case}: behavior={b} behaviorClose={bc} remoteCloseCode={res.get('remoteCloseCode')}")
    line = f"Autobahn fuzzingclient: {len(results)} cases: " + ", ".join(f"{k} {v}" for k, v in sorted(counts.items()))
    if os.environ.get("CI"):
        line += f" (CI: excluded {len(CI_EXCLUDE)} cases: 9.3.1, 9.4.1, 12.*.6-18 but 12.2.9 and 12.2.14, 13.*.6-18)"
    SUMMARY.append(line + f"; report {REPORT}/index.html")
    assert results, "empty Autobahn report"
    assert not failures, f"{len(failures)} Autobahn cases failed:\n" + "\n".join(failures)
