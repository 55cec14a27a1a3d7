"""Loads a page in headless Chromium (Debian's `chromium` and `chromium-driver`), driven over
the W3C WebDriver protocol with httpx, and reports what the page shows.

Usage: browser_dashboard.py CHROMEDRIVER PAGE_DIR PORT PAGE
Serves PAGE_DIR on http://127.0.0.1:PORT (an origin of its own, apart from the hub's), opens
http://127.0.0.1:PORT/PAGE in Chromium, then prints `window.dashboard` as one JSON line each
time it changes (and at least every 2 s). Stops, closing Chromium and chromedriver, when its
stdin closes or on SIGTERM.
"""
import functools
import http.server
import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time

import httpx


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Quiet(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *args):  # stdout is the report
        pass


def main() -> int:
    driver_bin, page_dir, port, page = sys.argv[1], sys.argv[2], int(sys.argv[3]), sys.argv[4]
    handler = functools.partial(Quiet, directory=page_dir)
    server = http.server.ThreadingHTTPServer(("127.0.0.1", port), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()

    profile = tempfile.TemporaryDirectory()
    driver_port = free_port()
    # its own process group, so that Chromium goes with it
    driver = subprocess.Popen(
        [driver_bin, f"--port={driver_port}"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    stop = threading.Event()

    def finish(*_):
        stop.set()

    signal.signal(signal.SIGTERM, finish)
    # the test closes stdin (or dies): stop
    threading.Thread(target=lambda: (sys.stdin.read(), stop.set()), daemon=True).start()

    wd = f"http://127.0.0.1:{driver_port}"
    client = httpx.Client(timeout=60.0)
    session = None
    try:
        for _ in range(200):
            try:
                if client.get(f"{wd}/status").json()["value"]["ready"]:
                    break
            except (httpx.HTTPError, ValueError, KeyError):
                pass
            time.sleep(0.1)
        caps = {
            "capabilities": {
                "alwaysMatch": {
                    "browserName": "chrome",
                    "goog:chromeOptions": {
                        "binary": os.environ.get("FHIR_HUB_CHROMIUM", "/usr/bin/chromium"),
                        "args": [
                            "--headless=new",
                            "--no-sandbox",  # tests run as root in containers
                            "--disable-gpu",
                            "--disable-dev-shm-usage",
                            f"--user-data-dir={profile.name}",
                        ],
                    },
                }
            }
        }
        r = client.post(f"{wd}/session", json=caps)
        r.raise_for_status()
        session = r.json()["value"]["sessionId"]
        r = client.post(
            f"{wd}/session/{session}/url", json={"url": f"http://127.0.0.1:{port}/{page}"}
        )
        r.raise_for_status()
        last, last_at = None, 0.0
        while not stop.is_set():
            r = client.post(
                f"{wd}/session/{session}/execute/sync",
                json={"script": "return JSON.stringify(window.dashboard || null)", "args": []},
            )
            r.raise_for_status()
            state = r.json()["value"]
            if state != last or time.monotonic() - last_at > 2:
                print(state, flush=True)
                last, last_at = state, time.monotonic()
            stop.wait(0.2)
    except Exception as e:  # the report says what failed; the test fails on it
        print(json.dumps({"driver_error": repr(e)}), flush=True)
    finally:
        if session:
            try:
                client.delete(f"{wd}/session/{session}")
            except httpx.HTTPError:
                pass
        try:
            os.killpg(driver.pid, signal.SIGTERM)
            driver.wait(timeout=10)
        except (ProcessLookupError, subprocess.TimeoutExpired):
            try:
                os.killpg(driver.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        server.shutdown()
        profile.cleanup()
    return 0


if __name__ == "__main__":
    sys.exit(main())
