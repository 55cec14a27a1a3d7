"""A websocket subscriber using the `websockets` library, the way a FHIR client binds.

Usage: ws_client.py URL TOKEN COUNT [LAST_SEEN]
Connects and binds with the Backport IG protocol, `bind-with-token: TOKEN` (with the hub's
resume extension `bind-with-token: TOKEN LAST_SEEN` when given; TOKEN,TOKEN,... sends one
bind line per token, in order), or, when TOKEN is
`classic:ID`, with the classic R4 protocol (`bind ID`, answered `bound ID`, then `ping ID`
per event). Prints every message received as one JSON line (JSON messages as sent, text ones
as {"text": ...}), flushes, and exits after COUNT messages, or with {"closed": CODE,
"reason": ...} when the hub closes the socket first. With FHIR_HUB_TOKEN set, the upgrade
request carries `Authorization: Bearer <token>`.
"""
import os
import json
import sys

from websockets.exceptions import ConnectionClosed
from websockets.sync.client import connect


def main() -> int:
    url, token, count = sys.argv[1], sys.argv[2], int(sys.argv[3])
    if token.startswith("classic:"):
        bind = f"bind {token[len('classic:'):]}"
    else:
        resume = f" {sys.argv[4]}" if len(sys.argv) > 4 else ""
        bind = [f"bind-with-token: {t}{resume}" for t in token.split(",")]
    token_env = os.environ.get("FHIR_HUB_TOKEN")
    headers = {"Authorization": f"Bearer {token_env}"} if token_env else None
    with connect(url, open_timeout=10, additional_headers=headers) as ws:
        for line in bind if isinstance(bind, list) else [bind]:
            ws.send(line)
        for _ in range(count):
            try:
                message = ws.recv(timeout=30)
            except ConnectionClosed as closed:
                frame = closed.rcvd
                print(json.dumps({"closed": frame.code if frame else None,
                                  "reason": frame.reason if frame else None}), flush=True)
                return 0
            try:
                print(json.dumps(json.loads(message)), flush=True)
            except ValueError:
                print(json.dumps({"text": message}), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
