"""An SSE subscriber using `httpx-sse`, the way a dashboard or a service reads a hub SSE
subscription.

Usage: sse_client.py URL COUNT [LAST_EVENT_ID]
Connects (sending `Last-Event-ID` when given), prints every event received as one JSON line
{"event", "id", "data"}, flushes, and exits after COUNT events (the handshake included), or
with {"end": true} when the hub ends the stream first. A refusal before the stream starts
prints {"status": CODE, "body": OPERATION_OUTCOME, "headers": {...}} and exits. With FHIR_HUB_TOKEN set, the request
carries `Authorization: Bearer <token>`.
"""
import json
import os
import sys

import httpx
from httpx_sse import connect_sse


def main() -> int:
    url, count = sys.argv[1], int(sys.argv[2])
    headers = {"Last-Event-ID": sys.argv[3]} if len(sys.argv) > 3 else {}
    token = os.environ.get("FHIR_HUB_TOKEN")
    if token:
        headers["Authorization"] = f"Bearer {token}"
    with httpx.Client(timeout=httpx.Timeout(30.0)) as client:
        with connect_sse(client, "GET", url, headers=headers) as source:
            if source.response.status_code != 200:
                source.response.read()
                print(json.dumps({"status": source.response.status_code,
                                  "body": source.response.json(),
                                  "headers": dict(source.response.headers)}), flush=True)
                return 0
            seen = 0
            for sse in source.iter_sse():
                print(json.dumps({"event": sse.event, "id": sse.id, "data": sse.data}), flush=True)
                seen += 1
                if seen >= count:
                    return 0
    print(json.dumps({"end": True}), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
