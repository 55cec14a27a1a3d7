"""A stream client that opens its stream and then never reads again, with a receive buffer
as small as the kernel allows: the slow reader the hub's policy is about.

Usage:
  stalled_reader.py ws HOST:PORT TOKEN       websocket upgrade, then `bind-with-token: TOKEN`
  stalled_reader.py sse HOST:PORT PATH       HTTP/1.1 GET of an SSE stream
  stalled_reader.py grpc HOST:PORT SUBSCRIPTION   grpcio Subscribe (live), one message taken
  stalled_reader.py consume HOST:PORT SUBSCRIPTION   grpcio Consume (consumer "stalled", from
                                                 its start), one message taken
Prints {"peer": "ip:port"} (its own address, as the hub sees it; grpc: {"open": true}) once
the stream is open, then reads nothing more and sleeps until it is killed.
"""
import base64
import json
import os
import socket
import sys
import time


def raw(addr: str) -> socket.socket:
    host, port = addr.rsplit(":", 1)
    s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    # before connect, so the window the hub sees stays small
    s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    s.connect((host, int(port)))
    return s


def read_head(s: socket.socket) -> bytes:
    head = b""
    while b"\r\n\r\n" not in head:
        chunk = s.recv(1)
        if not chunk:
            raise SystemExit("closed during the handshake")
        head += chunk
    return head


def ws(addr: str, token: str) -> socket.socket:
    s = raw(addr)
    key = base64.b64encode(os.urandom(16)).decode()
    s.sendall((f"GET /fhir/$subscription-ws HTTP/1.1\r\nHost: {addr}\r\nUpgrade: websocket\r\n"
               f"Connection: Upgrade\r\nSec-WebSocket-Key: {key}\r\n"
               "Sec-WebSocket-Version: 13\r\n\r\n").encode())
    head = read_head(s)
    if b" 101 " not in head.split(b"\r\n", 1)[0]:
        raise SystemExit(f"no upgrade: {head!r}")
    payload = f"bind-with-token: {token}".encode()
    mask = os.urandom(4)
    frame = bytes([0x81, 0x80 | len(payload)]) + mask + bytes(
        b ^ mask[i % 4] for i, b in enumerate(payload))
    s.sendall(frame)
    return s


def sse(addr: str, path: str) -> socket.socket:
    s = raw(addr)
    s.sendall((f"GET {path} HTTP/1.1\r\nHost: {addr}\r\nAccept: text/event-stream\r\n\r\n")
              .encode())
    head = read_head(s)
    if b" 200 " not in head.split(b"\r\n", 1)[0]:
        raise SystemExit(f"no stream: {head!r}")
    return s


def grpc_stream(target: str, sub: str, consume: bool):
    import importlib
    import grpc
    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
    stubs = importlib.import_module("grpc_client").stubs
    pb, rpc = stubs()
    # no BDP probing: the stream's window stays at its initial size while nothing is read
    channel = grpc.insecure_channel(target, options=[("grpc.http2.bdp_probe", 0)])
    stub = rpc.NotificationStreamStub(channel)
    if consume:
        stream = stub.Consume(pb.ConsumeRequest(consumer="stalled", subscription_ids=[sub]))
    else:
        stream = stub.Subscribe(pb.SubscribeRequest(subscription_id=sub, from_event_number=0))
    next(stream)
    return channel, stream


def main() -> int:
    mode, addr, what = sys.argv[1], sys.argv[2], sys.argv[3]
    if mode in ("grpc", "consume"):
        held = grpc_stream(addr, what, mode == "consume")
        print(json.dumps({"open": True}), flush=True)
    else:
        held = ws(addr, what) if mode == "ws" else sse(addr, what)
        host, port = held.getsockname()[:2]
        print(json.dumps({"peer": f"{host}:{port}"}), flush=True)
    while held:
        time.sleep(3600)
    return 0


if __name__ == "__main__":
    sys.exit(main())
