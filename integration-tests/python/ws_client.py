"""A websocket subscriber using the `websockets` library, the way a FHIR client binds to a
Backport IG websocket subscription.

Usage: ws_client.py URL TOKEN COUNT [LAST_SEEN]
Connects, sends `bind-with-token: TOKEN` (with the hub's resume extension
`bind-with-token: TOKEN LAST_SEEN` when given), prints every message received as one line
(the JSON as sent), flushes, and exits after COUNT messages (the handshake included).
"""
import sys

from websockets.sync.client import connect


def main() -> int:
    url, token, count = sys.argv[1], sys.argv[2], int(sys.argv[3])
    resume = f" {sys.argv[4]}" if len(sys.argv) > 4 else ""
    with connect(url, open_timeout=10) as ws:
        ws.send(f"bind-with-token: {token}{resume}")
        for _ in range(count):
            message = ws.recv(timeout=30)
            print(message.replace("\n", " "), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
