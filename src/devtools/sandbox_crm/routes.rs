//! The HTTP routes: the CRM (`/leads`), the analytics API (`/v1/`) and control and inspection
//! (`/_sandbox/`). The HubSpot (`/crm/`) and Salesforce (`/services/`) personalities have
//! their own files; they are dispatched from here.

use std::collections::BTreeMap;
use std::sync::atomic::AtomicBool;
use std::sync::Arc;

use bytes::Bytes;
use serde::Deserialize;
use serde_json::{json, Value};
use warp::http::{HeaderMap, Method, StatusCode};
use warp::reply::Response;
use warp::Filter;

use super::faults::{apply, decide, is_fault, Faults, Scope};
use super::hubspot;
use super::records::{
    create, key_stats, messages_in_order, note_write, now, AnalyticsMessage, IdempotencyMode,
    KeyStats,
};
use super::salesforce;
use super::state::{reset, set_faults, Shared, State};
use super::wire::{
    bad_request, header_map, json_response, not_found, percent_decode, query_param, to_json,
};

/// One catch-all route; dispatch is by hand, which keeps the filter type small and lets every
/// answer (404 included) be JSON.
pub(super) fn routes(
    shared: Arc<Shared>,
    reset: Arc<AtomicBool>,
) -> impl Filter<Extract = (Response,), Error = warp::Rejection> + Clone {
    warp::method()
        .and(warp::path::full())
        .and(warp::query::raw().or(warp::any().map(String::new)).unify())
        .and(warp::header::headers_cloned())
        .and(warp::body::bytes())
        .then(
            move |method: Method,
                  path: warp::path::FullPath,
                  query: String,
                  headers: HeaderMap,
                  body: Bytes| {
                let shared = shared.clone();
                let reset = reset.clone();
                async move {
                    let req = Req {
                        method,
                        path: path.as_str().to_string(),
                        query,
                        headers,
                        body,
                    };
                    handle(&shared, &reset, req).await
                }
            },
        )
}

pub(super) struct Req {
    pub(super) method: Method,
    pub(super) path: String,
    pub(super) query: String,
    pub(super) headers: HeaderMap,
    pub(super) body: Bytes,
}

async fn handle(shared: &Shared, reset: &AtomicBool, req: Req) -> Response {
    let path = req.path.trim_start_matches('/');
    let segs: Vec<&str> = path.split('/').filter(|s| !s.is_empty()).collect();
    match segs.first().copied() {
        Some("_sandbox") => control(shared, &req, &segs[1..]),
        Some("leads") => crm(shared, reset, &req, &segs[1..]).await,
        Some("v1") => analytics(shared, reset, &req, &segs[1..]).await,
        Some("crm") => hubspot::handle(shared, reset, &req, &segs[1..]).await,
        Some("services") => salesforce::handle(shared, reset, &req, &segs[1..]).await,
        _ => not_found(),
    }
}

/// The `crm` fault scope for a personality's request, decided and applied as `/leads` does
/// it, before any of the vendor's own logic. `note` counts the request in the personality's
/// stats under the same lock. `Some` is the faulted answer.
pub(super) async fn crm_fault(
    shared: &Shared,
    reset: &AtomicBool,
    note: impl FnOnce(&mut State),
) -> Option<Response> {
    let (latency, action) = {
        let mut st = shared.lock();
        let (latency, action) = decide(&mut st.crm);
        st.data.stats.requests += 1;
        if is_fault(&action) {
            st.data.stats.faults_injected += 1;
        }
        note(&mut st);
        (latency, action)
    };
    apply(latency, action, reset).await
}

// ---------------------------------------------------------------------------------------------
// CRM.

async fn crm(shared: &Shared, reset: &AtomicBool, req: &Req, rest: &[&str]) -> Response {
    enum Op {
        Create,
        Upsert(String),
        Get(String),
        List,
    }
    let op = match (&req.method, rest) {
        (&Method::POST, []) => Op::Create,
        (&Method::GET, []) => Op::List,
        (&Method::PUT, [k]) => Op::Upsert(percent_decode(k)),
        (&Method::GET, [k]) => Op::Get(percent_decode(k)),
        (_, [] | [_]) => {
            return json_response(405, &json!({"error": "method_not_allowed"}));
        }
        _ => return not_found(),
    };
    let body: Option<Value> = match op {
        Op::Create | Op::Upsert(_) => serde_json::from_slice(&req.body).ok(),
        _ => None,
    };
    let key = match &op {
        Op::Create => req
            .headers
            .get("idempotency-key")
            .and_then(|v| v.to_str().ok())
            .map(str::to_string)
            .or_else(|| {
                body.as_ref()
                    .and_then(|b| b.get("key"))
                    .and_then(Value::as_str)
                    .map(str::to_string)
            }),
        Op::Upsert(k) => Some(k.clone()),
        _ => None,
    };
    let is_write = matches!(op, Op::Create | Op::Upsert(_));

    let (latency, action) = {
        let mut st = shared.lock();
        let (latency, action) = decide(&mut st.crm);
        let d = &mut st.data;
        d.stats.requests += 1;
        d.stats.crm_requests += 1;
        if is_fault(&action) {
            d.stats.faults_injected += 1;
        }
        if let (true, Some(k)) = (is_write, &key) {
            let ks = key_stats(d, k);
            ks.requests += 1;
            ks.last_headers = header_map(&req.headers);
        }
        (latency, action)
    };
    if let Some(resp) = apply(latency, action, reset).await {
        return resp;
    }

    let mut st = shared.lock();
    let idem = st.idempotency;
    let d = &mut st.data;
    match op {
        Op::List => to_json(200, &d.records),
        Op::Get(k) => match d.by_key.get(&k).and_then(|&i| d.records.get(i)) {
            Some(r) => to_json(200, r),
            None => not_found(),
        },
        Op::Create => {
            let Some(body) = body else {
                return bad_request("body is not JSON");
            };
            let existing = key.as_ref().and_then(|k| d.by_key.get(k).copied());
            match (existing, idem) {
                (Some(i), IdempotencyMode::Honor) => {
                    let id = d.records[i].id.clone();
                    d.records[i].writes += 1;
                    note_write(d, key.as_deref());
                    json_response(200, &json!({"id": id, "created": false}))
                }
                (Some(i), IdempotencyMode::Conflict) => {
                    let id = d.records[i].id.clone();
                    json_response(409, &json!({"id": id, "error": "duplicate"}))
                }
                _ => {
                    let id = create(d, key, body);
                    json_response(201, &json!({"id": id, "created": true}))
                }
            }
        }
        Op::Upsert(k) => {
            let Some(body) = body else {
                return bad_request("body is not JSON");
            };
            match d.by_key.get(&k).copied() {
                Some(i) => {
                    let r = &mut d.records[i];
                    r.body = body.clone();
                    r.updated_at = now();
                    r.writes += 1;
                    let id = r.id.clone();
                    key_stats(d, &k).latest_body = Some(body);
                    note_write(d, Some(&k));
                    json_response(200, &json!({"id": id, "created": false}))
                }
                None => {
                    let id = create(d, Some(k), body);
                    json_response(201, &json!({"id": id, "created": true}))
                }
            }
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Analytics (Segment-like).

async fn analytics(shared: &Shared, reset: &AtomicBool, req: &Req, rest: &[&str]) -> Response {
    let kind = match (&req.method, rest) {
        (&Method::POST, [k @ ("identify" | "track" | "batch" | "page" | "alias" | "group")]) => *k,
        (_, [_]) => return json_response(405, &json!({"error": "method_not_allowed"})),
        _ => return not_found(),
    };
    let body: Option<Value> = serde_json::from_slice(&req.body).ok();
    // (messageId, type, message) for each message in the request.
    let msgs: Vec<(String, String, Value)> = match (&body, kind) {
        (Some(b), "batch") => b
            .get("batch")
            .and_then(Value::as_array)
            .map(|items| {
                items
                    .iter()
                    .filter_map(|m| {
                        let id = m.get("messageId")?.as_str()?.to_string();
                        let t = m.get("type").and_then(Value::as_str).unwrap_or("track");
                        Some((id, t.to_string(), m.clone()))
                    })
                    .collect()
            })
            .unwrap_or_default(),
        (Some(b), k) => b
            .get("messageId")
            .and_then(Value::as_str)
            .map(|id| vec![(id.to_string(), k.to_string(), b.clone())])
            .unwrap_or_default(),
        (None, _) => Vec::new(),
    };

    let (latency, action) = {
        let mut st = shared.lock();
        let (latency, action) = decide(&mut st.analytics);
        let d = &mut st.data;
        d.stats.requests += 1;
        d.stats.analytics_requests += 1;
        if is_fault(&action) {
            d.stats.faults_injected += 1;
        }
        let headers = header_map(&req.headers);
        for (id, t, m) in &msgs {
            let msg = d.messages.entry(id.clone()).or_insert_with(|| {
                d.message_order.push(id.clone());
                d.stats.analytics_messages += 1;
                AnalyticsMessage {
                    message_id: id.clone(),
                    kind: t.clone(),
                    requests: 0,
                    calls: 0,
                    user_id: None,
                    event: None,
                    body: m.clone(),
                    last_headers: BTreeMap::new(),
                }
            });
            msg.requests += 1;
            msg.last_headers = headers.clone();
        }
        (latency, action)
    };
    if let Some(resp) = apply(latency, action, reset).await {
        return resp;
    }
    if body.is_none() {
        return json_response(
            400,
            &json!({"success": false, "message": "body is not JSON"}),
        );
    }
    if msgs.is_empty() {
        return json_response(
            400,
            &json!({"success": false, "message": "messageId missing"}),
        );
    }

    let mut st = shared.lock();
    let d = &mut st.data;
    match kind {
        "identify" => d.stats.identify_calls += 1,
        "track" => d.stats.track_calls += 1,
        "batch" => d.stats.batch_calls += 1,
        _ => {}
    }
    for (id, _, m) in msgs {
        if let Some(msg) = d.messages.get_mut(&id) {
            msg.calls += 1;
            if msg.calls == 2 {
                d.stats.duplicate_messages += 1;
            }
            msg.user_id = m.get("userId").and_then(Value::as_str).map(str::to_string);
            msg.event = m.get("event").and_then(Value::as_str).map(str::to_string);
            msg.body = m;
        }
    }
    json_response(200, &json!({"success": true}))
}

// ---------------------------------------------------------------------------------------------
// Control and inspection.

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct IdempotencyBody {
    mode: IdempotencyMode,
}

fn control(shared: &Shared, req: &Req, rest: &[&str]) -> Response {
    let get = req.method == Method::GET;
    let post = req.method == Method::POST;
    match rest {
        ["stats"] if get => {
            let st = shared.lock();
            let mut s = st.data.stats.clone();
            s.idempotency = st.idempotency;
            to_json(200, &s)
        }
        ["records"] if get => to_json(200, &shared.lock().data.records),
        ["keys"] if get => {
            let st = shared.lock();
            let keys: Vec<&KeyStats> = st.data.keys.values().collect();
            to_json(200, &keys)
        }
        ["keys", k] if get => match shared.lock().data.keys.get(&percent_decode(k)) {
            Some(ks) => to_json(200, ks),
            None => not_found(),
        },
        ["messages"] if get => to_json(200, &messages_in_order(&shared.lock().data)),
        ["messages", id] if get => match shared.lock().data.messages.get(&percent_decode(id)) {
            Some(m) => to_json(200, m),
            None => not_found(),
        },
        ["reset"] if post => {
            reset(&mut shared.lock());
            json_response(200, &json!({"reset": true}))
        }
        ["faults"] if get => {
            let st = shared.lock();
            json_response(
                200,
                &json!({"crm": st.crm.faults, "analytics": st.analytics.faults}),
            )
        }
        ["faults"] if post => {
            let scope = match query_param(&req.query, "scope").as_deref() {
                None | Some("all") => Scope::All,
                Some("crm") => Scope::Crm,
                Some("analytics") => Scope::Analytics,
                Some(_) => return bad_request("scope is one of all, crm, analytics"),
            };
            let faults: Faults = if req.body.iter().all(u8::is_ascii_whitespace) {
                Faults::default()
            } else {
                match serde_json::from_slice(&req.body) {
                    Ok(f) => f,
                    Err(e) => return bad_request(&format!("faults: {e}")),
                }
            };
            if StatusCode::from_u16(faults.fail_status).is_err() || faults.fail_status < 200 {
                return bad_request("fail_status must be an HTTP status 200-999");
            }
            tracing::info!(?scope, ?faults, "sandbox faults set");
            set_faults(&mut shared.lock(), scope, faults.clone());
            to_json(200, &json!({"scope": scope, "faults": faults}))
        }
        ["idempotency"] if get => json_response(200, &json!({"mode": shared.lock().idempotency})),
        ["hubspot", rest @ ..] => hubspot::control(shared, req, rest),
        ["salesforce", rest @ ..] => salesforce::control(shared, req, rest),
        ["idempotency"] if post => match serde_json::from_slice::<IdempotencyBody>(&req.body) {
            Ok(b) => {
                shared.lock().idempotency = b.mode;
                json_response(200, &json!({"mode": b.mode}))
            }
            Err(e) => bad_request(&format!("idempotency: {e}")),
        },
        _ => not_found(),
    }
}
