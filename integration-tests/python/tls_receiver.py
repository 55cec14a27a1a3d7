"""An HTTPS receiver that requires a client certificate signed by a given CA.

Usage: tls_receiver.py SERVER_CERT SERVER_KEY CA_CERT
Prints "port N" once listening, then one JSON line per request it accepted:
{"method", "path", "client"} where client is the certificate's common name.
"""
import http.server
import json
import ssl
import sys


class Handler(http.server.BaseHTTPRequestHandler):
    def do_POST(self):
        length = int(self.headers.get("content-length", "0"))
        self.rfile.read(length)
        subject = dict(x[0] for x in self.connection.getpeercert().get("subject", ()))
        print(json.dumps({"method": self.command, "path": self.path,
                          "webhook_id": self.headers.get("webhook-id", ""),
                          "client": subject.get("commonName", "")}), flush=True)
        self.send_response(200)
        self.send_header("content-length", "0")
        self.end_headers()

    do_PUT = do_POST

    def log_message(self, *args):
        pass


def main() -> None:
    cert, key, ca = sys.argv[1:4]
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.load_cert_chain(cert, key)
    ctx.load_verify_locations(ca)
    ctx.verify_mode = ssl.CERT_REQUIRED
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    server.socket = ctx.wrap_socket(server.socket, server_side=True)
    print(f"port {server.server_address[1]}", flush=True)
    server.serve_forever()


if __name__ == "__main__":
    main()
