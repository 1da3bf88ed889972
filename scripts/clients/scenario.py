"""Shared by the Python client scenarios: run named checks, print one PASS/FAIL/SKIP line
each, exit non-zero when any failed. Not a test framework: a check is a function that
raises on failure."""

import os
import sys
import time
import traceback
import uuid


class Scenarios:
    def __init__(self, client):
        self.client = client
        self.failed = 0

    def run(self, name, fn, *args):
        start = time.monotonic()
        try:
            note = fn(*args)
        except Skip as s:
            print(f"SKIP {self.client} {name}: {s}", flush=True)
            return
        except Exception as e:  # noqa: BLE001 - any failure is reported, not raised
            self.failed += 1
            print(f"FAIL {self.client} {name}: {type(e).__name__}: {e}", flush=True)
            if os.environ.get("COMPAT_VERBOSE"):
                traceback.print_exc()
            return
        took = time.monotonic() - start
        extra = f" ({note})" if note else ""
        print(f"PASS {self.client} {name} [{took:.1f}s]{extra}", flush=True)

    def finish(self):
        sys.exit(1 if self.failed else 0)


class Skip(Exception):
    """The client library cannot express this scenario."""


def check(cond, what):
    if not cond:
        raise AssertionError(what)


def wait_for(pred, timeout, what, interval=0.1):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        v = pred()
        if v:
            return v
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout}s waiting for {what}")


def unique(prefix):
    return f"{prefix}-{uuid.uuid4().hex[:8]}"
