//! A real OTLP trace receiver for tests, on one loopback port: OTLP/HTTP (`POST /v1/traces`,
//! `application/x-protobuf`) and OTLP/gRPC (`TraceService/Export` over HTTP/2 cleartext). Each
//! `ExportTraceServiceRequest` is decoded with prost (the types of `opentelemetry-proto`) and
//! its spans kept; tests await the spans they expect, with a deadline.

use std::collections::HashMap;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::{Buf, Bytes};
use http_body_util::{combinators::BoxBody, BodyExt, Full, StreamBody};
use hyper::body::{Frame, Incoming};
use hyper::{Request, Response, StatusCode};
use opentelemetry_proto::tonic::collector::trace::v1::{
    ExportTraceServiceRequest, ExportTraceServiceResponse,
};
use opentelemetry_proto::tonic::common::v1::{any_value, KeyValue};
use prost::Message;
use serde_json::Value;
use tokio::sync::watch;

const GRPC_PATH: &str = "/opentelemetry.proto.collector.trace.v1.TraceService/Export";

/// One received span, flattened (ids as lowercase hex, as in a `traceparent`).
#[derive(Debug, Clone)]
pub struct SpanRecord {
    pub name: String,
    pub trace_id: String,
    pub span_id: String,
    /// Empty for a root span.
    pub parent_span_id: String,
    /// OTLP `SpanKind`: 1 internal, 2 server, 3 client, 4 producer, 5 consumer.
    pub kind: i32,
    pub attributes: HashMap<String, Value>,
    /// (trace id, span id) of each link.
    pub links: Vec<(String, String)>,
    /// OTLP status code: 0 unset, 1 ok, 2 error.
    pub status: i32,
    pub service_name: String,
    /// `http/protobuf` or `grpc`: how the span arrived.
    pub protocol: &'static str,
}

impl SpanRecord {
    pub fn attr(&self, key: &str) -> Option<&Value> {
        self.attributes.get(key)
    }
}

#[derive(Default)]
struct Received {
    spans: Vec<SpanRecord>,
    requests: usize,
}

pub struct OtlpReceiver {
    addr: SocketAddr,
    received: Arc<Mutex<Received>>,
    changed: watch::Receiver<usize>,
    task: tokio::task::JoinHandle<()>,
}

impl OtlpReceiver {
    pub async fn start() -> OtlpReceiver {
        let received = Arc::new(Mutex::new(Received::default()));
        let (tx, changed) = watch::channel(0usize);
        let tx = Arc::new(tx);
        let state = received.clone();
        // HTTP/1.1 for OTLP/HTTP, HTTP/2 prior knowledge for gRPC: both on this port.
        let (addr, task) = super::serve_http("OTLP receiver", move |req| {
            handle(req, state.clone(), tx.clone())
        })
        .await;
        OtlpReceiver {
            addr,
            received,
            changed,
            task,
        }
    }

    /// The base URL for `otlp_endpoint` (either protocol).
    pub fn endpoint(&self) -> String {
        format!("http://{}", self.addr)
    }

    pub fn spans(&self) -> Vec<SpanRecord> {
        self.received.lock().unwrap().spans.clone()
    }

    /// Export requests received so far (an empty export still counts).
    pub fn requests(&self) -> usize {
        self.received.lock().unwrap().requests
    }

    /// Waits until `done` holds for the spans received so far; panics after `limit` with what
    /// did arrive.
    pub async fn wait_for(
        &self,
        what: &str,
        limit: Duration,
        done: impl Fn(&[SpanRecord]) -> bool,
    ) -> Vec<SpanRecord> {
        let mut rx = self.changed.clone();
        let deadline = tokio::time::Instant::now() + limit;
        loop {
            let spans = self.spans();
            if done(&spans) {
                return spans;
            }
            if tokio::time::timeout_at(deadline, rx.changed())
                .await
                .is_err()
            {
                panic!(
                    "timed out waiting for {what}; spans received: {:#?}",
                    brief(&spans)
                );
            }
        }
    }
}

impl Drop for OtlpReceiver {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Name, ids and attributes: enough to see what arrived when a wait fails.
pub fn brief(spans: &[SpanRecord]) -> Vec<String> {
    spans
        .iter()
        .map(|s| {
            format!(
                "{} trace={} span={} parent={} links={:?} attrs={:?}",
                s.name, s.trace_id, s.span_id, s.parent_span_id, s.links, s.attributes
            )
        })
        .collect()
}

type Body = BoxBody<Bytes, Infallible>;

async fn handle(
    req: Request<Incoming>,
    state: Arc<Mutex<Received>>,
    tx: Arc<watch::Sender<usize>>,
) -> Result<Response<Body>, Infallible> {
    let path = req.uri().path().to_string();
    let grpc = path == GRPC_PATH;
    if req.method() != hyper::Method::POST || !(grpc || path == "/v1/traces") {
        return Ok(status(StatusCode::NOT_FOUND));
    }
    let body = match req.into_body().collect().await {
        Ok(b) => b.to_bytes(),
        Err(_) => return Ok(status(StatusCode::BAD_REQUEST)),
    };
    let message = if grpc {
        // gRPC framing: 1 byte compressed flag (0: we ask for no compression), 4 bytes length.
        let mut b = body.clone();
        if b.len() < 5 || b.get_u8() != 0 {
            return Ok(status(StatusCode::BAD_REQUEST));
        }
        let len = b.get_u32() as usize;
        b.slice(..len.min(b.len()))
    } else {
        body
    };
    let Ok(export) = ExportTraceServiceRequest::decode(message) else {
        return Ok(status(StatusCode::BAD_REQUEST));
    };
    let protocol = if grpc { "grpc" } else { "http/protobuf" };
    {
        let mut r = state.lock().unwrap();
        r.requests += 1;
        r.spans.extend(flatten(export, protocol));
        tx.send_replace(r.spans.len());
    }
    let answer = ExportTraceServiceResponse::default().encode_to_vec();
    if grpc {
        let mut framed = vec![0u8];
        framed.extend_from_slice(&(answer.len() as u32).to_be_bytes());
        framed.extend_from_slice(&answer);
        let mut trailers = hyper::HeaderMap::new();
        trailers.insert("grpc-status", "0".parse().unwrap());
        let frames = futures::stream::iter([
            Ok::<_, Infallible>(Frame::data(Bytes::from(framed))),
            Ok(Frame::trailers(trailers)),
        ]);
        Ok(Response::builder()
            .header("content-type", "application/grpc")
            .body(StreamBody::new(frames).boxed())
            .unwrap())
    } else {
        Ok(Response::builder()
            .header("content-type", "application/x-protobuf")
            .body(Full::new(Bytes::from(answer)).boxed())
            .unwrap())
    }
}

fn status(code: StatusCode) -> Response<Body> {
    Response::builder()
        .status(code)
        .body(Full::new(Bytes::new()).boxed())
        .unwrap()
}

fn flatten(export: ExportTraceServiceRequest, protocol: &'static str) -> Vec<SpanRecord> {
    let mut out = Vec::new();
    for rs in export.resource_spans {
        let resource = rs
            .resource
            .map(|r| attrs(&r.attributes))
            .unwrap_or_default();
        let service_name = resource
            .get("service.name")
            .and_then(Value::as_str)
            .unwrap_or_default()
            .to_string();
        for ss in rs.scope_spans {
            for s in ss.spans {
                out.push(SpanRecord {
                    name: s.name,
                    trace_id: hex::encode(&s.trace_id),
                    span_id: hex::encode(&s.span_id),
                    parent_span_id: hex::encode(&s.parent_span_id),
                    kind: s.kind,
                    attributes: attrs(&s.attributes),
                    links: s
                        .links
                        .iter()
                        .map(|l| (hex::encode(&l.trace_id), hex::encode(&l.span_id)))
                        .collect(),
                    status: s.status.map(|st| st.code).unwrap_or(0),
                    service_name: service_name.clone(),
                    protocol,
                });
            }
        }
    }
    out
}

fn attrs(kvs: &[KeyValue]) -> HashMap<String, Value> {
    kvs.iter()
        .map(|kv| {
            let v = match kv.value.as_ref().and_then(|v| v.value.as_ref()) {
                Some(any_value::Value::StringValue(s)) => Value::from(s.as_str()),
                Some(any_value::Value::BoolValue(b)) => Value::from(*b),
                Some(any_value::Value::IntValue(i)) => Value::from(*i),
                Some(any_value::Value::DoubleValue(d)) => Value::from(*d),
                Some(other) => Value::from(format!("{other:?}")),
                None => Value::Null,
            };
            (kv.key.clone(), v)
        })
        .collect()
}
