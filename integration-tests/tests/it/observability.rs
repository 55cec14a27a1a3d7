//! What an operator sees of each request: a request id on every answer (HTTP and gRPC) and
//! on the access log line, and nothing of a query or a credential in the log.

use std::time::Duration;

use crate::harness::{Hub, HubEnv};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_answer_carries_a_request_id_and_the_access_log_names_it_without_the_query() {
    let hub = Hub::start(HubEnv::default()).await;
    let http = reqwest::Client::new();

    // a client's own id is kept when it is a short token
    let res = http
        .get(format!("{}/fhir/metadata", hub.url))
        .header("x-request-id", "lab-feed-0042")
        .send()
        .await
        .unwrap();
    assert_eq!(res.status().as_u16(), 200);
    assert_eq!(res.headers()["x-request-id"], "lab-feed-0042");

    // anything else is replaced: a log line cannot be forged through it
    let res = http
        .get(format!("{}/fhir/Subscription?_count=1", hub.url))
        .header("x-request-id", "forged id=\"x\" status=200")
        .send()
        .await
        .unwrap();
    let replaced = res.headers()["x-request-id"].to_str().unwrap().to_owned();
    assert!(uuid::Uuid::parse_str(&replaced).is_ok(), "{replaced}");

    // an error answer has one too, and so has an unknown route
    let res = http
        .get(format!("{}/no/such/route?token=s3cr3t-in-query", hub.url))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status().as_u16(), 404);
    let missing = res.headers()["x-request-id"].to_str().unwrap().to_owned();

    // gRPC answers carry it as a header of the call
    let channel = tonic::transport::Channel::from_shared(hub.grpc_url.clone())
        .unwrap()
        .connect()
        .await
        .unwrap();
    let mut client = tonic::client::Grpc::new(channel);
    client.ready().await.unwrap();
    let path = tonic::codegen::http::uri::PathAndQuery::from_static("/grpc.health.v1.Health/Check");
    // an empty HealthCheckRequest (service "": the whole server) is zero bytes
    let res = client
        .unary(tonic::Request::new(Vec::new()), path, RawCodec)
        .await
        .unwrap();
    assert!(
        res.metadata().contains_key("x-request-id"),
        "{:?}",
        res.metadata()
    );

    // the access log: one INFO line per answer with the id, route and status
    let log_path = hub.data_dir.path().join("hub.log");
    let mut log = String::new();
    for _ in 0..50 {
        log = without_colours(&std::fs::read_to_string(&log_path).unwrap_or_default());
        if log.contains(&missing) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let line = |id: &str| {
        log.lines()
            .find(|l| l.contains(id) && l.contains("answered"))
            .unwrap_or_else(|| panic!("no access log line for {id}:\n{log}"))
            .to_owned()
    };
    let meta = line("lab-feed-0042");
    assert!(
        meta.contains("INFO")
            && meta.contains("route=/fhir/metadata")
            && meta.contains("status=200"),
        "{meta}"
    );
    assert!(line(&replaced).contains("route=/fhir/Subscription"));
    let l = line(&missing);
    // a path no route matched is not logged (it may be anything, patient ids included)
    assert!(l.contains("status=404") && l.contains("path=-"), "{l}");
    assert!(
        !log.contains("/no/such/route"),
        "an unrouted path reached the log"
    );
    assert!(!log.contains("s3cr3t-in-query"), "a query reached the log");
    assert!(
        !log.contains("forged id"),
        "a forged request id reached the log"
    );
}

/// Messages as their bytes (a call whose message types the test need not know).
#[derive(Default)]
struct RawCodec;

impl tonic::codec::Codec for RawCodec {
    type Encode = Vec<u8>;
    type Decode = Vec<u8>;
    type Encoder = RawCodec;
    type Decoder = RawCodec;

    fn encoder(&mut self) -> RawCodec {
        RawCodec
    }

    fn decoder(&mut self) -> RawCodec {
        RawCodec
    }
}

impl tonic::codec::Encoder for RawCodec {
    type Item = Vec<u8>;
    type Error = tonic::Status;

    fn encode(
        &mut self,
        item: Vec<u8>,
        dst: &mut tonic::codec::EncodeBuf<'_>,
    ) -> Result<(), tonic::Status> {
        use bytes::BufMut as _;
        dst.put_slice(&item);
        Ok(())
    }
}

impl tonic::codec::Decoder for RawCodec {
    type Item = Vec<u8>;
    type Error = tonic::Status;

    fn decode(
        &mut self,
        src: &mut tonic::codec::DecodeBuf<'_>,
    ) -> Result<Option<Vec<u8>>, tonic::Status> {
        use bytes::Buf as _;
        Ok(Some(src.copy_to_bytes(src.remaining()).to_vec()))
    }
}

/// The log without terminal colour sequences (`ESC [ … m`).
fn without_colours(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut chars = text.chars();
    while let Some(c) = chars.next() {
        if c == '\u{1b}' {
            for d in chars.by_ref() {
                if d == 'm' {
                    break;
                }
            }
        } else {
            out.push(c);
        }
    }
    out
}
