"""Runs Autobahn|Testsuite's wstest from a directory filled by `pip install --target`.

Python 2.7 only, as the suite itself. The directory comes from AUTOBAHN_PY, else
target/autobahn-py beside this script's repository; every argument is passed to
wstest unchanged (for example `-m fuzzingclient -s spec.json`).
"""
import os
import site
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
DIR = os.environ.get("AUTOBAHN_PY") or os.path.join(HERE, "..", "target", "autobahn-py")
site.addsitedir(os.path.abspath(DIR))

from autobahntestsuite import wstest  # noqa: E402

if __name__ == "__main__":
    sys.argv[0] = "wstest"
    wstest.run()
