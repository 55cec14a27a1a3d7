"""Verify one received rest-hook with the standardwebhooks library.

Usage: verify_webhook.py MESSAGE.json, where the file holds {"secret", "body", "headers"}.
Exits 0 when the signature verifies, 1 otherwise.
"""
import json
import sys

from standardwebhooks.webhooks import Webhook


def main() -> int:
    with open(sys.argv[1], encoding="utf-8") as f:
        msg = json.load(f)
    try:
        Webhook(msg["secret"]).verify(msg["body"].encode("utf-8"), msg["headers"])
    except Exception as e:  # the library raises WebhookVerificationError
        print(f"verification failed: {e}", file=sys.stderr)
        return 1
    print("verified", msg["headers"]["webhook-id"])
    return 0


if __name__ == "__main__":
    sys.exit(main())
