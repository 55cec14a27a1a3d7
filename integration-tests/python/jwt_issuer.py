"""A stand-in OAuth2 authorization server for the security tests, built on PyJWT and
`cryptography`: it serves a JWKS and mints SMART Backend Services style access tokens.

Usage: jwt_issuer.py ISSUER
Prints {"url": "http://127.0.0.1:PORT"} once listening, then serves:
  GET /jwks.json                 the public keys (RS384 "rsa-1", ES384 "ec-1"; "rsa-2" after
                                 GET /rotate)
  GET /rotate                    add key "rsa-2" to the JWKS (key rotation)
  GET /token?alg=&kid=&aud=&sub=&scope=&tenant=&patient=&exp=&nbf=&forge=1
      a signed JWT; exp and nbf are offsets in seconds from now (default exp=300, no nbf);
      forge=1 signs with a key that is not in the JWKS but names a kid that is.
"""
import json
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, urlparse

import jwt
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from jwt.algorithms import ECAlgorithm, RSAAlgorithm

ISSUER = sys.argv[1]
KEYS = {
    "rsa-1": rsa.generate_private_key(public_exponent=65537, key_size=2048),
    "ec-1": ec.generate_private_key(ec.SECP384R1()),
}
EC256 = ec.generate_private_key(ec.SECP256R1())
ROTATED = rsa.generate_private_key(public_exponent=65537, key_size=2048)
FORGER_RSA = rsa.generate_private_key(public_exponent=65537, key_size=2048)
FORGER_EC = ec.generate_private_key(ec.SECP384R1())
LOCK = threading.Lock()
FETCHES = {"count": 0}


def jwk(kid, key):
    pub = key.public_key()
    if isinstance(key, rsa.RSAPrivateKey):
        d = json.loads(RSAAlgorithm.to_jwk(pub))
    else:
        d = json.loads(ECAlgorithm.to_jwk(pub))
    d["kid"] = kid
    d["use"] = "sig"
    return d


def jwks():
    with LOCK:
        keys = dict(KEYS)
    keys["ec-256"] = EC256
    return {"keys": [jwk(k, v) for k, v in keys.items()]}


class Handler(BaseHTTPRequestHandler):
    def log_message(self, *args):
        pass

    def reply(self, code, body, ctype="application/json"):
        data = body.encode() if isinstance(body, str) else body
        self.send_response(code)
        self.send_header("content-type", ctype)
        self.send_header("content-length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def do_GET(self):
        u = urlparse(self.path)
        q = {k: v[0] for k, v in parse_qs(u.query).items()}
        if u.path == "/jwks.json":
            FETCHES["count"] += 1
            return self.reply(200, json.dumps(jwks()))
        if u.path == "/fetches":
            return self.reply(200, json.dumps(FETCHES))
        if u.path == "/rotate":
            with LOCK:
                KEYS["rsa-2"] = ROTATED
            return self.reply(200, "{}")
        if u.path == "/token":
            alg = q.get("alg", "RS384")
            kid = q.get("kid", "rsa-1" if alg.startswith("RS") else "ec-1")
            now = int(time.time())
            claims = {
                "iss": q.get("iss", ISSUER),
                "sub": q.get("sub", "client-1"),
                "aud": q.get("aud", "https://hub.test/fhir"),
                "exp": now + int(q.get("exp", "300")),
                "iat": now,
                "jti": f"{now}-{time.monotonic_ns()}",
                "scope": q.get("scope", "system/Subscription.cruds system/*.rs"),
            }
            if "nbf" in q:
                claims["nbf"] = now + int(q["nbf"])
            if "tenant" in q:
                claims["tenant"] = q["tenant"]
            if "patient" in q:
                claims["patient"] = q["patient"]
            if q.get("forge") == "1":
                key = FORGER_RSA if alg.startswith("RS") else FORGER_EC
            elif kid == "ec-256":
                key = EC256
            elif kid == "rsa-2":
                key = ROTATED
            else:
                # an unknown kid is signed with rsa-1's key (the hub must not find it)
                with LOCK:
                    key = KEYS.get(kid, KEYS["rsa-1"] if alg.startswith("RS") else KEYS["ec-1"])
            token = jwt.encode(claims, key, algorithm=alg, headers={"kid": kid})
            return self.reply(200, token, "text/plain")
        self.reply(404, "{}")


def main():
    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    print(json.dumps({"url": f"http://127.0.0.1:{server.server_address[1]}"}), flush=True)
    server.serve_forever()


if __name__ == "__main__":
    main()
