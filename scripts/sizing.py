#!/usr/bin/env python3
"""Measure what one notification costs on disk (docs/operations.md, "Sizing").

Starts the real binary (open mode on loopback), a rest-hook receiver answering 200, one
subscription with full-resource payloads, publishes N Observations through POST /events,
waits until all are delivered, stops the hub and reads the database's own sizes: bytes per
notification (the notification log and its delivery state), per audit row, and (embedded)
per change event in the embedded log.

Usage: scripts/sizing.py --binary target/debug/fhir-hub [-n 10000]
                         [--postgres postgres://root@127.0.0.1:5432/test]
"""

import argparse
import http.server
import json
import os
import re
import shutil
import sqlite3
import subprocess
import tempfile
import threading
import time
import urllib.request
import uuid

received = 0
lock = threading.Lock()


class Receiver(http.server.BaseHTTPRequestHandler):
    def _ok(self):
        global received
        n = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(n)
        self.send_response(200)
        self.send_header("Content-Length", "0")
        self.end_headers()
        if body:
            with lock:
                received += 1

    do_POST = do_PUT = _ok

    def log_message(self, *a):
        pass


def call(method, url, body=None, ctype="application/fhir+json"):
    data = body.encode() if isinstance(body, str) else body
    req = urllib.request.Request(url, data=data, method=method)
    if data is not None:
        req.add_header("Content-Type", ctype)
    with urllib.request.urlopen(req, timeout=60) as r:
        return json.loads(r.read() or b"null")


def observation(i):
    return {"resourceType": "Observation", "id": f"o{i}", "status": "final",
            "code": {"coding": [{"system": "http://loinc.org", "code": "2345-7",
                                 "display": "Glucose"}]},
            "subject": {"reference": f"Patient/p{i % 500}"},
            "effectiveDateTime": "2024-05-01T10:00:00Z",
            "valueQuantity": {"value": 5.4, "unit": "mmol/L", "system": "http://unitsofmeasure.org",
                              "code": "mmol/L"}}


def psql(url, sql):
    return subprocess.run(["psql", "-tAq", url, "-c", sql], check=True, capture_output=True,
                          text=True).stdout.strip()


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--binary", required=True)
    ap.add_argument("-n", type=int, default=10000)
    ap.add_argument("--postgres")
    args = ap.parse_args()

    srv = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Receiver)
    threading.Thread(target=srv.serve_forever, daemon=True).start()
    rport = srv.server_address[1]

    data = tempfile.mkdtemp(prefix="fhir-hub-sizing-")
    env = dict(os.environ, HUB_GRPC__LISTEN="", HUB_DELIVERY__ALLOWED_PORTS="[]",
               HUB_DELIVERY__ALLOWED_NETWORKS='["127.0.0.0/8"]', RUST_LOG="warn")
    pg_db = None
    if args.postgres:
        pg_db = f"sizing_{uuid.uuid4().hex[:8]}"
        psql(args.postgres, f"CREATE DATABASE {pg_db}")
        env["HUB_DATABASE__URL"] = re.sub(r"/[^/?]*(\?|$)", f"/{pg_db}\\1", args.postgres, count=1) \
            if args.postgres.count("/") >= 3 else args.postgres + "/" + pg_db
    hub = subprocess.Popen([args.binary, "serve", "--listen", "127.0.0.1:0", "--data-dir", data],
                           env=env, stdout=subprocess.PIPE, text=True)
    base = None
    for line in hub.stdout:
        if line.startswith("fhir-hub listening on "):
            base = line.split()[-1]
            break
    threading.Thread(target=lambda: [None for _ in hub.stdout], daemon=True).start()
    sub = call("POST", f"{base}/fhir/Subscription", json.dumps({
        "resourceType": "Subscription", "status": "requested", "reason": "sizing",
        "criteria": "Observation?code=http://loinc.org|2345-7",
        "channel": {"type": "rest-hook", "endpoint": f"http://127.0.0.1:{rport}/hook",
                    "payload": "application/fhir+json"}}))
    sid = sub["id"]
    start = time.time()
    for chunk in range(0, args.n, 1000):
        lines = "\n".join(json.dumps(observation(i)) for i in range(chunk, min(args.n, chunk + 1000)))
        call("POST", f"{base}/events", lines, "application/x-ndjson")
    while received < args.n:
        if time.time() - start > 1800:
            raise SystemExit(f"only {received} of {args.n} delivered in 30 min")
        time.sleep(0.5)
    elapsed = time.time() - start
    time.sleep(3)  # the last audit rows are written after the delivery they record
    hub.terminate()
    hub.wait(timeout=60)

    if pg_db:
        url = env["HUB_DATABASE__URL"]
        size = lambda t: int(psql(url, f"SELECT pg_total_relation_size('{t}')"))
        count = lambda t: int(psql(url, f"SELECT count(*) FROM {t}"))
        backend = "PostgreSQL"
    else:
        db = sqlite3.connect(os.path.join(data, "hub.db"))
        tables = dict(db.execute("SELECT name, tbl_name FROM sqlite_master WHERE tbl_name != ''"))
        per = {}
        for name, pgsize in db.execute("SELECT name, sum(pgsize) FROM dbstat GROUP BY name"):
            per[tables.get(name, name)] = per.get(tables.get(name, name), 0) + pgsize
        size = lambda t: per.get(t, 0)
        count = lambda t: db.execute(f"SELECT count(*) FROM {t}").fetchone()[0]
        backend = "SQLite (embedded)"
    tables = {}
    for t in TABLES:
        try:
            rows, nbytes = count(t), size(t)
        except Exception:
            continue
        if nbytes:
            tables[t] = {"rows": rows, "bytes": nbytes,
                         "bytes_per_row": round(nbytes / rows) if rows else None,
                         "bytes_per_event": round(nbytes / args.n)}
    notes, audits = tables["notification_log"]["rows"], tables["audit_events"]["rows"]
    result = {"backend": backend, "events": args.n, "notifications": notes, "audit_rows": audits,
              "seconds_to_deliver_all": round(elapsed, 1), "tables": tables}
    if not pg_db:
        # through SQLite (dbstat reads the WAL too): the pages each file's tables use
        for name in ("log", "hub"):
            f = sqlite3.connect(os.path.join(data, f"{name}.db"))
            used = f.execute("SELECT sum(pgsize) FROM dbstat").fetchone()[0]
            result[f"{name}_db_bytes_per_event"] = round(used / args.n)
            f.close()
    else:
        result["database_bytes_per_event"] = round(
            int(psql(url, f"SELECT pg_database_size('{pg_db}')")) / args.n)
        psql(args.postgres, f"DROP DATABASE {pg_db}")
    shutil.rmtree(data, ignore_errors=True)
    print(json.dumps(result, indent=1))


TABLES = ["notification_log", "notifications", "delivery_state", "audit_events",
          "resource_versions", "resource_history", "logged_events", "matching_changes",
          "consumer_offsets", "subscriptions", "api_keys"]


if __name__ == "__main__":
    main()
