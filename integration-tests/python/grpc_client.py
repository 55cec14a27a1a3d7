"""A gRPC client of the hub's NotificationStream using `grpcio`, with stubs generated from
`proto/` by `grpc_tools.protoc` at start (as an analytics job would).

Usage:
  grpc_client.py TARGET subscribe SUBSCRIPTION FROM COUNT [OPTION...]
  grpc_client.py TARGET consume CONSUMER SUB[,SUB...] COUNT [OPTION...]
  grpc_client.py TARGET commit CONSUMER SUBSCRIPTION NUMBER [GENERATION]
  grpc_client.py TARGET health
FROM is `from_event_number` as a number, or a `start` position: `earliest`, `latest`,
`at=N` (event number N on) or `time=INSTANT` (RFC 3339). Options: `commit` (consume: commit
each notification), `reset=earliest|latest|fail` (the request's `auto_reset`), `meta` (first
print the response's initial metadata as {"metadata": {KEY: [VALUES]}}).
Prints one JSON line per notification ({"subscription", "event_number", "notification_id",
"bundle_type", "focus_type", "focus_id", "action", "heartbeat", "generation", "bundle"}), or
{"error": CODE, "details": ..., "error_info": {"reason", "domain", "metadata"} or null} when
the call fails (the `google.rpc.ErrorInfo` of the status details, read with
`grpcio-status`), and exits after COUNT (heartbeats count). `commit` commits each event with
the generation its message carries.
With FHIR_HUB_TOKEN set, every call carries `authorization: Bearer <token>`; with FHIR_HUB_CA
(a PEM file), the channel is TLS trusting that CA, and with FHIR_HUB_CLIENT_CERT and
FHIR_HUB_CLIENT_KEY (PEM files) as well it presents that client certificate.
"""
import importlib
import json
import os
import sys
import tempfile

import grpc
from google.rpc import error_details_pb2
from grpc_status import rpc_status
from grpc_tools import protoc

HERE = os.path.dirname(os.path.abspath(__file__))
PROTO_ROOT = os.path.join(HERE, "..", "..", "proto")


def stubs():
    out = tempfile.mkdtemp(prefix="fhirhub-stubs-")
    args = ["protoc", f"-I{PROTO_ROOT}", f"--python_out={out}", f"--grpc_python_out={out}",
            os.path.join(PROTO_ROOT, "fhirhub", "v1", "stream.proto")]
    if protoc.main(args) != 0:
        raise SystemExit("protoc failed")
    sys.path.insert(0, out)
    pb = importlib.import_module("fhirhub.v1.stream_pb2")
    rpc = importlib.import_module("fhirhub.v1.stream_pb2_grpc")
    return pb, rpc


def show(n):
    bundle = json.loads(n.bundle_json)
    print(json.dumps({"subscription": n.subscription_id, "event_number": n.event_number,
                      "notification_id": n.notification_id, "bundle_type": bundle.get("type"),
                      "focus_type": n.focus_type, "focus_id": n.focus_id, "action": n.action,
                      "heartbeat": n.heartbeat, "generation": n.generation, "bundle": bundle}),
          flush=True)


def start_of(pb, text):
    """A SubscribeRequest's start fields from FROM."""
    if text == "earliest":
        return {"start": pb.StartPosition(earliest=True)}
    if text == "latest":
        return {"start": pb.StartPosition(latest=True)}
    if text.startswith("at="):
        return {"start": pb.StartPosition(event_number=int(text[3:]))}
    if text.startswith("time="):
        return {"start": pb.StartPosition(logged_at=text[5:])}
    return {"from_event_number": int(text)}


def options(pb, args):
    commit = "commit" in args
    meta = "meta" in args
    reset = pb.AUTO_RESET_UNSPECIFIED
    for a in args:
        if a.startswith("reset="):
            reset = {"earliest": pb.AUTO_RESET_EARLIEST, "latest": pb.AUTO_RESET_LATEST,
                     "fail": pb.AUTO_RESET_FAIL}[a[6:]]
    return commit, meta, reset


def print_metadata(stream):
    md = {}
    for key, value in stream.initial_metadata():
        md.setdefault(key, []).append(value)
    print(json.dumps({"metadata": md}), flush=True)


def error_info(e):
    status = rpc_status.from_call(e)
    if status is None:
        return None
    for detail in status.details:
        if detail.Is(error_details_pb2.ErrorInfo.DESCRIPTOR):
            info = error_details_pb2.ErrorInfo()
            detail.Unpack(info)
            return {"reason": info.reason, "domain": info.domain, "metadata": dict(info.metadata)}
    return None


def main() -> int:
    target, mode = sys.argv[1], sys.argv[2]
    ca = os.environ.get("FHIR_HUB_CA")
    if ca:
        def read(path):
            if not path:
                return None
            with open(path, "rb") as f:
                return f.read()
        credentials = grpc.ssl_channel_credentials(
            root_certificates=read(ca),
            private_key=read(os.environ.get("FHIR_HUB_CLIENT_KEY")),
            certificate_chain=read(os.environ.get("FHIR_HUB_CLIENT_CERT")))
        channel = grpc.secure_channel(target, credentials)
    else:
        channel = grpc.insecure_channel(target)
    if mode == "health":
        check = channel.unary_unary("/grpc.health.v1.Health/Check",
                                    request_serializer=lambda b: b,
                                    response_deserializer=lambda b: b)
        # HealthCheckResponse { status = 1 (SERVING) } is the two bytes 08 01
        print(json.dumps({"serving": check(b"", timeout=10) == b"\x08\x01"}), flush=True)
        return 0
    pb, rpc = stubs()
    stub = rpc.NotificationStreamStub(channel)
    token = os.environ.get("FHIR_HUB_TOKEN")
    md = [("authorization", f"Bearer {token}")] if token else None
    try:
        if mode == "subscribe":
            sub, start, count = sys.argv[3], start_of(pb, sys.argv[4]), int(sys.argv[5])
            _, meta, reset = options(pb, sys.argv[6:])
            stream = stub.Subscribe(pb.SubscribeRequest(subscription_id=sub, auto_reset=reset, **start),
                                    metadata=md)
            if meta:
                print_metadata(stream)
            for i, n in enumerate(stream):
                show(n)
                if i + 1 >= count:
                    stream.cancel()
                    break
        elif mode == "consume":
            consumer, subs, count = sys.argv[3], sys.argv[4].split(","), int(sys.argv[5])
            commit, meta, reset = options(pb, sys.argv[6:])
            stream = stub.Consume(pb.ConsumeRequest(consumer=consumer, subscription_ids=subs,
                                                    auto_reset=reset), metadata=md)
            if meta:
                print_metadata(stream)
            for i, n in enumerate(stream):
                show(n)
                if commit and not n.heartbeat:
                    stub.Commit(pb.CommitRequest(consumer=consumer, subscription_id=n.subscription_id,
                                                 event_number=n.event_number,
                                                 generation=n.generation), metadata=md)
                if i + 1 >= count:
                    stream.cancel()
                    break
        elif mode == "commit":
            generation = int(sys.argv[6]) if len(sys.argv) > 6 else 0
            r = stub.Commit(pb.CommitRequest(consumer=sys.argv[3], subscription_id=sys.argv[4],
                                             event_number=int(sys.argv[5]), generation=generation),
                            metadata=md)
            print(json.dumps({"committed": r.committed}), flush=True)
    except grpc.RpcError as e:
        print(json.dumps({"error": e.code().name, "details": e.details(),
                          "error_info": error_info(e)}), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
