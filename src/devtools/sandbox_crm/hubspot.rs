//! The HubSpot personality: `POST /crm/v3/objects/contacts/batch/upsert` and
//! `POST /crm/v3/objects/contacts`, as the CRM v3 API documents them. That means bearer auth,
//! two account-wide rate limits with their `X-HubSpot-RateLimit-*` headers (a rolling burst
//! window and a daily count), and the batch rules: at most `max_batch` inputs, no duplicate
//! ids, and all-or-none when `email` is the `idProperty`, because HubSpot says "Partial upserts
//! are not supported when using email as the idProperty". Control and inspection live under
//! `/_sandbox/hubspot` (see `docs/sandbox-crm-personalities.md`).
//!
//! A request goes through these steps in order:
//! - Routing: an unknown path gets 404 and a wrong method 405. Like `/leads`, these are not
//!   faulted or counted.
//! - The `crm` fault scope. A faulted request never reaches "HubSpot", so it counts toward no
//!   limit.
//! - Auth. A 401 does not count either.
//! - The limits. Every request that gets this far counts, 429s included, because HubSpot
//!   counts them too.
//! - The body.
//!
//! Contacts are unique per lowercased `email` and per the value of any other property once it
//! has been used as an `idProperty` (e.g. `leadrouter_key`). A write that would give a second
//! contact such a value is refused with HubSpot's `CONFLICT`.

use std::collections::{BTreeSet, HashMap, HashSet, VecDeque};
use std::sync::atomic::AtomicBool;
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};
use serde_json::{json, Map, Value};
use warp::http::header::AUTHORIZATION;
use warp::http::{HeaderMap, HeaderName, HeaderValue, Method};
use warp::reply::Response;

use super::records::now;
use super::routes::{crm_fault, Req};
use super::state::Shared;
use super::wire::{bad_request, json_response, not_found, percent_decode, to_json};
use super::SandboxCrm;

/// How the HubSpot personality behaves. JSON (`POST /_sandbox/hubspot`): every field optional,
/// left-out fields take their defaults (as with `/_sandbox/faults`), `interval` is humantime.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct HubspotConfig {
    /// `None`: any non-empty bearer token is accepted; `Some`: only this one.
    pub token: Option<String>,
    /// Requests allowed per rolling `interval` (Free/Starter: 100 per 10 s).
    pub burst_limit: u32,
    #[serde(with = "humantime_serde")]
    pub interval: Duration,
    /// Requests per day; [`SandboxCrm::hubspot_daily_reset`] plays midnight.
    pub daily_limit: u64,
    /// Inputs allowed in one batch call.
    pub max_batch: usize,
    /// `false`: a batch with an `email` idProperty is all-or-none (HubSpot's rule); `true`:
    /// valid inputs are written and the batch answers 207. Other batches are always partial.
    pub partial: bool,
    /// Emails refused beyond the format check, as HubSpot refuses some real-looking ones
    /// (compared lowercased).
    pub reject_emails: Vec<String>,
}

impl Default for HubspotConfig {
    fn default() -> Self {
        HubspotConfig {
            token: None,
            burst_limit: 100,
            interval: Duration::from_secs(10),
            daily_limit: 250_000,
            max_batch: 100,
            partial: false,
            reject_emails: Vec::new(),
        }
    }
}

/// One HubSpot contact as the sandbox keeps it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct HubspotContact {
    /// Numeric, from `101`.
    pub id: String,
    /// The `email` property, lowercased (HubSpot stores it so).
    pub email: Option<String>,
    /// Every property written so far, merged (later write wins per property).
    pub properties: Map<String, Value>,
    pub created_at: String,
    pub updated_at: String,
    /// Inputs applied to this contact: 1 means upserted exactly once.
    pub writes: u64,
    /// The `properties` of each applied input, in order.
    pub history: Vec<Map<String, Value>>,
}

/// What the HubSpot personality saw.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct HubspotStats {
    /// Requests to a HubSpot route, including faulted ones and 401s.
    pub requests: u64,
    /// Batch upserts that passed auth and the limits (whatever their answer).
    pub batch_calls: u64,
    /// Inputs in those calls (over-cap calls included).
    pub inputs: u64,
    /// The largest call seen, over-cap ones included: shows whether a client kept to the cap.
    pub max_inputs_in_a_call: usize,
    /// Inputs answered with their own error (invalid email, conflict), written or not.
    pub rejected_inputs: u64,
    /// 429 `TEN_SECONDLY_ROLLING`.
    pub rate_limited: u64,
    /// 429 `DAILY`.
    pub rate_limited_daily: u64,
    pub unauthorized: u64,
    /// Requests counted toward the daily limit since the last daily reset.
    pub daily_used: u64,
    /// Contacts made by the single create (`POST /crm/v3/objects/contacts`).
    pub creates: u64,
}

// ---------------------------------------------------------------------------------------------
// Rate limits.

/// What the limits make of one request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Verdict {
    Pass,
    Rolling,
    Daily,
}

#[derive(Default)]
struct Limits {
    /// The instants of the latest requests, at most `burst_limit` of them. Only they matter:
    /// the window is full exactly when the `burst_limit`-th latest one is inside it.
    window: VecDeque<Instant>,
    daily_used: u64,
}

impl Limits {
    /// Counts one request at `now` (whatever the verdict) and judges it by the counts before.
    fn hit(&mut self, now: Instant, cfg: &HubspotConfig) -> Verdict {
        self.prune(now, cfg.interval);
        let verdict = if self.daily_used >= cfg.daily_limit {
            Verdict::Daily
        } else if self.window.len() >= cfg.burst_limit as usize {
            Verdict::Rolling
        } else {
            Verdict::Pass
        };
        self.window.push_back(now);
        while self.window.len() > cfg.burst_limit as usize {
            self.window.pop_front();
        }
        self.daily_used += 1;
        verdict
    }

    fn prune(&mut self, now: Instant, interval: Duration) {
        while let Some(&t) = self.window.front() {
            if now.saturating_duration_since(t) < interval {
                break;
            }
            self.window.pop_front();
        }
    }

    fn headers(&self, cfg: &HubspotConfig, h: &mut HeaderMap) {
        let remaining = u64::from(cfg.burst_limit).saturating_sub(self.window.len() as u64);
        let interval_ms = u64::try_from(cfg.interval.as_millis()).unwrap_or(u64::MAX);
        let daily_remaining = cfg.daily_limit.saturating_sub(self.daily_used);
        for (name, v) in [
            ("x-hubspot-ratelimit-max", u64::from(cfg.burst_limit)),
            ("x-hubspot-ratelimit-remaining", remaining),
            ("x-hubspot-ratelimit-interval-milliseconds", interval_ms),
            ("x-hubspot-ratelimit-daily", cfg.daily_limit),
            ("x-hubspot-ratelimit-daily-remaining", daily_remaining),
        ] {
            h.insert(HeaderName::from_static(name), HeaderValue::from(v));
        }
    }
}

// ---------------------------------------------------------------------------------------------
// State.

pub(super) struct HubspotState {
    config: HubspotConfig,
    limits: Limits,
    /// Creation order.
    contacts: Vec<HubspotContact>,
    /// (unique property, lowercased value) -> index into `contacts`.
    index: HashMap<(String, String), usize>,
    /// Properties whose values identify one contact: `email`, then every idProperty used.
    unique: BTreeSet<String>,
    next_id: u64,
    stats: HubspotStats,
}

impl Default for HubspotState {
    fn default() -> Self {
        HubspotState {
            config: HubspotConfig::default(),
            limits: Limits::default(),
            contacts: Vec::new(),
            index: HashMap::new(),
            unique: BTreeSet::from(["email".to_string()]),
            // HubSpot's ids are numeric; the first contact is 101.
            next_id: 100,
            stats: HubspotStats::default(),
        }
    }
}

/// Where an input's contact is: already stored, or to be made by an earlier (or this) input of
/// the same batch.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Target {
    Existing(usize),
    New(usize),
}

/// One well-formed input of a batch upsert.
struct Input {
    id_property: String,
    id: String,
    properties: Map<String, Value>,
    trace: Option<String>,
}

impl Input {
    /// What makes two inputs "the same id" and finds the contact.
    fn key(&self) -> (String, String) {
        (self.id_property.clone(), self.id.to_lowercase())
    }
}

impl HubspotState {
    fn set_config(&mut self, cfg: HubspotConfig) {
        self.config = cfg;
        // Like `set_faults` restarting the flap clock: a test that sets a burst limit gets
        // the whole window. The daily count stays; that is what `daily_reset` is for.
        self.limits.window.clear();
    }

    fn stats(&self) -> HubspotStats {
        HubspotStats {
            daily_used: self.limits.daily_used,
            ..self.stats.clone()
        }
    }

    fn contact_by_email(&self, email: &str) -> Option<&HubspotContact> {
        let i = self
            .index
            .get(&("email".to_string(), email.to_lowercase()))?;
        self.contacts.get(*i)
    }

    fn authorized(&self, headers: &HeaderMap) -> bool {
        match (bearer(headers), &self.config.token) {
            (None, _) => false,
            (Some(_), None) => true,
            (Some(t), Some(want)) => t == want,
        }
    }

    fn email_refused(&self, email: &str) -> bool {
        let lower = email.to_lowercase();
        !plausible_email(email)
            || self
                .config
                .reject_emails
                .iter()
                .any(|r| r.to_lowercase() == lower)
    }

    /// Makes `prop` a unique property: indexes the contacts that already hold a value for it.
    fn make_unique(&mut self, prop: &str) {
        if !self.unique.insert(prop.to_string()) {
            return;
        }
        for (i, c) in self.contacts.iter().enumerate() {
            if let Some(v) = c.properties.get(prop).and_then(prop_key) {
                self.index.entry((prop.to_string(), v)).or_insert(i);
            }
        }
    }

    fn owner(
        &self,
        key: &(String, String),
        claimed: &HashMap<(String, String), Target>,
    ) -> Option<Target> {
        claimed
            .get(key)
            .copied()
            .or_else(|| self.index.get(key).map(|&c| Target::Existing(c)))
    }

    /// The unique values the input gives its contact; the idProperty's is the id itself.
    fn unique_values(&self, input: &Input) -> Vec<(String, String)> {
        self.unique
            .iter()
            .filter_map(|p| {
                let v = if *p == input.id_property {
                    Some(input.id.to_lowercase())
                } else {
                    input.properties.get(p).and_then(prop_key)
                };
                v.map(|v| (p.clone(), v))
            })
            .collect()
    }

    /// Checks one input against the contacts and the earlier inputs of its batch: `Ok` has the
    /// unique values it claims, `Err` the input's error object.
    fn check_input(
        &self,
        input: &Input,
        target: Target,
        claimed: &HashMap<(String, String), Target>,
    ) -> Result<Vec<(String, String)>, Value> {
        let email = if input.id_property == "email" {
            Some(input.id.as_str())
        } else {
            input
                .properties
                .get("email")
                .and_then(Value::as_str)
                .filter(|e| !e.is_empty())
        };
        if let Some(e) = email.filter(|e| self.email_refused(e)) {
            return Err(input_error(
                "VALIDATION_ERROR",
                &invalid_email_message(e),
                input,
            ));
        }
        let values = self.unique_values(input);
        for key in &values {
            match self.owner(key, claimed) {
                Some(o) if o != target => {
                    let msg = match o {
                        Target::Existing(c) => format!(
                            "Contact already exists. Existing ID: {}",
                            self.contacts[c].id
                        ),
                        Target::New(j) => format!(
                            "Property {} value {} is also given by input {j} of this batch",
                            key.0, key.1
                        ),
                    };
                    return Err(input_error("CONFLICT", &msg, input));
                }
                _ => {}
            }
        }
        Ok(values)
    }

    fn new_contact(&mut self) -> usize {
        self.next_id += 1;
        let t = now();
        self.contacts.push(HubspotContact {
            id: self.next_id.to_string(),
            email: None,
            properties: Map::new(),
            created_at: t.clone(),
            updated_at: t,
            writes: 0,
            history: Vec::new(),
        });
        self.contacts.len() - 1
    }

    fn unique_values_of(&self, idx: usize) -> Vec<(String, String)> {
        let props = &self.contacts[idx].properties;
        self.unique
            .iter()
            .filter_map(|p| props.get(p).and_then(prop_key).map(|v| (p.clone(), v)))
            .collect()
    }

    /// Merges one input into contact `idx`; `id` is the (idProperty, id) it was found by.
    fn apply(&mut self, idx: usize, properties: &Map<String, Value>, id: Option<(&str, &str)>) {
        let old = self.unique_values_of(idx);
        let c = &mut self.contacts[idx];
        for (k, v) in properties {
            c.properties.insert(k.clone(), v.clone());
        }
        if let Some((p, v)) = id {
            c.properties
                .insert(p.to_string(), Value::String(v.to_string()));
        }
        if let Some(Value::String(e)) = c.properties.get_mut("email") {
            *e = e.to_lowercase();
        }
        c.email = c
            .properties
            .get("email")
            .and_then(Value::as_str)
            .filter(|e| !e.is_empty())
            .map(str::to_string);
        c.updated_at = now();
        c.writes += 1;
        c.history.push(properties.clone());
        for k in old {
            if self.index.get(&k) == Some(&idx) {
                self.index.remove(&k);
            }
        }
        for k in self.unique_values_of(idx) {
            self.index.entry(k).or_insert(idx);
        }
    }

    fn result(&self, idx: usize, new: bool, trace: Option<&str>) -> Value {
        let c = &self.contacts[idx];
        let mut r = json!({
            "id": c.id,
            "new": new,
            "properties": c.properties,
            "createdAt": c.created_at,
            "updatedAt": c.updated_at,
            "archived": false,
        });
        if let (Some(t), Some(o)) = (trace, r.as_object_mut()) {
            o.insert("objectWriteTraceId".into(), Value::String(t.to_string()));
        }
        r
    }

    fn batch_upsert(&mut self, body: Result<Value, String>) -> Response {
        let started = now();
        self.stats.batch_calls += 1;
        let inputs = match parse_inputs(body) {
            Ok(v) => v,
            Err(m) => return validation_error(&format!("Invalid input JSON: {m}")),
        };
        self.stats.inputs += inputs.len() as u64;
        self.stats.max_inputs_in_a_call = self.stats.max_inputs_in_a_call.max(inputs.len());
        if inputs.len() > self.config.max_batch {
            return validation_error(&format!(
                "Batch input limit of {} exceeded",
                self.config.max_batch
            ));
        }
        let mut seen = HashSet::new();
        let mut dups: Vec<String> = Vec::new();
        for input in &inputs {
            let key = input.key();
            if !seen.insert(key.clone()) && !dups.contains(&key.1) {
                dups.push(key.1);
            }
        }
        if !dups.is_empty() {
            return validation_error(&format!(
                "Duplicate IDs found in batch input: [{}]",
                dups.join(", ")
            ));
        }
        for input in &inputs {
            self.make_unique(&input.id_property);
        }

        // Check everything before writing anything, so all-or-none can write nothing.
        let mut claimed: HashMap<(String, String), Target> = HashMap::new();
        let mut plans: Vec<Result<Target, Value>> = Vec::with_capacity(inputs.len());
        for (i, input) in inputs.iter().enumerate() {
            let key = input.key();
            let target = self.owner(&key, &claimed).unwrap_or(Target::New(i));
            match self.check_input(input, target, &claimed) {
                Ok(values) => {
                    for v in values {
                        claimed.insert(v, target);
                    }
                    plans.push(Ok(target));
                }
                Err(e) => plans.push(Err(e)),
            }
        }
        let errors: Vec<Value> = plans.iter().filter_map(|p| p.clone().err()).collect();
        self.stats.rejected_inputs += errors.len() as u64;
        let all_or_none = !self.config.partial && inputs.iter().any(|i| i.id_property == "email");
        if all_or_none && !errors.is_empty() {
            return json_response(
                400,
                &json!({
                    "status": "error",
                    "category": "VALIDATION_ERROR",
                    "message": "Some inputs were invalid",
                    "errors": errors,
                    "correlationId": correlation_id(),
                }),
            );
        }

        let mut made: HashMap<usize, usize> = HashMap::new();
        let mut results = Vec::with_capacity(inputs.len());
        for (input, plan) in inputs.iter().zip(plans) {
            let Ok(target) = plan else { continue };
            let (idx, new) = match target {
                Target::Existing(c) => (c, false),
                Target::New(j) => match made.get(&j) {
                    Some(&c) => (c, false),
                    None => {
                        let c = self.new_contact();
                        made.insert(j, c);
                        (c, true)
                    }
                },
            };
            let id = if input.id_property == "email" {
                input.id.to_lowercase()
            } else {
                input.id.clone()
            };
            self.apply(idx, &input.properties, Some((&input.id_property, &id)));
            results.push(self.result(idx, new, input.trace.as_deref()));
        }
        let mut answer = json!({
            "status": "COMPLETE",
            "results": results,
            "startedAt": started,
            "completedAt": now(),
        });
        if errors.is_empty() {
            return json_response(200, &answer);
        }
        if let Some(o) = answer.as_object_mut() {
            o.insert("numErrors".into(), json!(errors.len()));
            o.insert("errors".into(), Value::Array(errors));
        }
        json_response(207, &answer)
    }

    /// The single create: not idempotent, a new contact every time (unless a unique value,
    /// e.g. the email, is taken: 409 as HubSpot answers).
    fn create(&mut self, body: Result<Value, String>) -> Response {
        let props = match body {
            Ok(Value::Object(mut o)) => match o.remove("properties") {
                Some(Value::Object(p)) => p,
                _ => return validation_error("Invalid input JSON: properties must be an object"),
            },
            Ok(_) => return validation_error("Invalid input JSON: expected an object"),
            Err(e) => return validation_error(&format!("Invalid input JSON: {e}")),
        };
        if let Some(e) = props
            .get("email")
            .and_then(Value::as_str)
            .filter(|e| !e.is_empty() && self.email_refused(e))
        {
            return validation_error(&invalid_email_message(e));
        }
        for p in &self.unique {
            let Some(v) = props.get(p).and_then(prop_key) else {
                continue;
            };
            if let Some(&c) = self.index.get(&(p.clone(), v)) {
                return json_response(
                    409,
                    &json!({
                        "status": "error",
                        "category": "CONFLICT",
                        "message": format!("Contact already exists. Existing ID: {}", self.contacts[c].id),
                        "correlationId": correlation_id(),
                    }),
                );
            }
        }
        let idx = self.new_contact();
        self.apply(idx, &props, None);
        self.stats.creates += 1;
        json_response(201, &self.result(idx, true, None))
    }
}

// ---------------------------------------------------------------------------------------------
// Routes.

enum Op {
    BatchUpsert,
    Create,
}

/// `/crm/...`; `rest` is the path after `crm`.
pub(super) async fn handle(
    shared: &Shared,
    reset: &AtomicBool,
    req: &Req,
    rest: &[&str],
) -> Response {
    const CONTACTS: [&str; 3] = ["v3", "objects", "contacts"];
    const BATCH: [&str; 5] = ["v3", "objects", "contacts", "batch", "upsert"];
    let op = match (&req.method, rest) {
        (&Method::POST, r) if r == BATCH => Op::BatchUpsert,
        (&Method::POST, r) if r == CONTACTS => Op::Create,
        (m, r) if r == BATCH || r == CONTACTS => {
            return hs_error(
                405,
                "METHOD_NOT_ALLOWED",
                &format!("{m} is not supported on {}; use POST", req.path),
            );
        }
        _ => return hs_error(404, "NOT_FOUND", &format!("No route for {}", req.path)),
    };
    if let Some(resp) = crm_fault(shared, reset, |st| st.hubspot.stats.requests += 1).await {
        return resp;
    }
    // Parsed before taking the lock; it is only looked at past auth and the limits.
    let body: Result<Value, String> = serde_json::from_slice(&req.body).map_err(|e| e.to_string());

    let mut st = shared.lock();
    let hs = &mut st.hubspot;
    if !hs.authorized(&req.headers) {
        hs.stats.unauthorized += 1;
        return hs_unauthorized();
    }
    let mut resp = match hs.limits.hit(Instant::now(), &hs.config) {
        Verdict::Daily => {
            hs.stats.rate_limited_daily += 1;
            rate_limited("DAILY", "You have reached your daily limit.")
        }
        Verdict::Rolling => {
            hs.stats.rate_limited += 1;
            rate_limited(
                "TEN_SECONDLY_ROLLING",
                "You have reached your ten_secondly_rolling limit.",
            )
        }
        Verdict::Pass => match op {
            Op::BatchUpsert => hs.batch_upsert(body),
            Op::Create => hs.create(body),
        },
    };
    hs.limits.headers(&hs.config, resp.headers_mut());
    resp
}

/// `/_sandbox/hubspot...`; `rest` is the path after `hubspot`.
pub(super) fn control(shared: &Shared, req: &Req, rest: &[&str]) -> Response {
    let get = req.method == Method::GET;
    let post = req.method == Method::POST;
    match rest {
        [] if get => config_and_stats(&shared.lock().hubspot),
        [] if post => {
            let cfg: HubspotConfig = if req.body.iter().all(u8::is_ascii_whitespace) {
                HubspotConfig::default()
            } else {
                match serde_json::from_slice(&req.body) {
                    Ok(c) => c,
                    Err(e) => return bad_request(&format!("hubspot: {e}")),
                }
            };
            tracing::info!(?cfg, "sandbox hubspot config set");
            let mut st = shared.lock();
            st.hubspot.set_config(cfg);
            config_and_stats(&st.hubspot)
        }
        ["contacts"] if get => to_json(200, &shared.lock().hubspot.contacts),
        ["contacts", email] if get => {
            match shared
                .lock()
                .hubspot
                .contact_by_email(&percent_decode(email))
            {
                Some(c) => to_json(200, c),
                None => not_found(),
            }
        }
        ["daily_reset"] if post => {
            let mut st = shared.lock();
            st.hubspot.limits.daily_used = 0;
            config_and_stats(&st.hubspot)
        }
        _ => not_found(),
    }
}

fn config_and_stats(hs: &HubspotState) -> Response {
    json_response(200, &json!({"config": hs.config, "stats": hs.stats()}))
}

// ---------------------------------------------------------------------------------------------
// The handle.

impl SandboxCrm {
    /// Sets the HubSpot personality's config and restarts its rolling window (the daily count
    /// stays: see [`hubspot_daily_reset`](Self::hubspot_daily_reset)).
    pub fn set_hubspot(&self, cfg: HubspotConfig) {
        self.shared.lock().hubspot.set_config(cfg);
    }

    pub fn hubspot_config(&self) -> HubspotConfig {
        self.shared.lock().hubspot.config.clone()
    }

    /// Every HubSpot contact, in creation order.
    pub fn hubspot_contacts(&self) -> Vec<HubspotContact> {
        self.shared.lock().hubspot.contacts.clone()
    }

    /// The contact with this email (compared lowercased).
    pub fn hubspot_contact(&self, email: &str) -> Option<HubspotContact> {
        self.shared.lock().hubspot.contact_by_email(email).cloned()
    }

    pub fn hubspot_stats(&self) -> HubspotStats {
        self.shared.lock().hubspot.stats()
    }

    /// Midnight: the daily count goes back to 0.
    pub fn hubspot_daily_reset(&self) {
        self.shared.lock().hubspot.limits.daily_used = 0;
    }
}

// ---------------------------------------------------------------------------------------------
// Helpers (the email check and the bearer are Salesforce's too).

/// The sandbox's email check: exactly one `@`, a non-empty local part, a dot in the domain, no
/// whitespace. Loose on purpose: it stands for "the CRM refuses some emails", not for RFC 5322.
pub(super) fn plausible_email(s: &str) -> bool {
    let mut parts = s.split('@');
    match (parts.next(), parts.next(), parts.next()) {
        (Some(local), Some(domain), None) => {
            !local.is_empty() && domain.contains('.') && !s.chars().any(char::is_whitespace)
        }
        _ => false,
    }
}

/// The token of `Authorization: Bearer <t>` (scheme case-insensitive), if non-empty.
pub(super) fn bearer(headers: &HeaderMap) -> Option<&str> {
    let v = headers.get(AUTHORIZATION)?.to_str().ok()?;
    let (scheme, token) = v.trim().split_once(' ')?;
    let token = token.trim();
    (scheme.eq_ignore_ascii_case("bearer") && !token.is_empty()).then_some(token)
}

/// A fresh UUID-shaped id, as HubSpot's `correlationId`s are.
fn correlation_id() -> String {
    let h = format!("{:032x}", rand::random::<u128>());
    format!(
        "{}-{}-{}-{}-{}",
        &h[0..8],
        &h[8..12],
        &h[12..16],
        &h[16..20],
        &h[20..32]
    )
}

/// How a property value is compared for uniqueness: text lowercased, numbers and booleans as
/// written; null and empty text are no value.
fn prop_key(v: &Value) -> Option<String> {
    match v {
        Value::String(s) if !s.is_empty() => Some(s.to_lowercase()),
        Value::Number(n) => Some(n.to_string()),
        Value::Bool(b) => Some(b.to_string()),
        _ => None,
    }
}

fn parse_inputs(body: Result<Value, String>) -> Result<Vec<Input>, String> {
    let body = body?;
    let Some(items) = body.get("inputs").and_then(Value::as_array) else {
        return Err("inputs must be an array".into());
    };
    items
        .iter()
        .enumerate()
        .map(|(i, item)| {
            let text = |name: &str| match item.get(name) {
                Some(Value::String(s)) if !s.is_empty() => Some(s.clone()),
                Some(Value::Number(n)) => Some(n.to_string()),
                _ => None,
            };
            let id_property =
                text("idProperty").ok_or(format!("inputs[{i}].idProperty is required"))?;
            let id = text("id").ok_or(format!("inputs[{i}].id is required"))?;
            let properties = match item.get("properties") {
                None | Some(Value::Null) => Map::new(),
                Some(Value::Object(p)) => p.clone(),
                Some(_) => return Err(format!("inputs[{i}].properties must be an object")),
            };
            Ok(Input {
                id_property,
                id,
                properties,
                trace: text("objectWriteTraceId"),
            })
        })
        .collect()
}

fn invalid_email_message(email: &str) -> String {
    let detail = json!([{
        "isValid": false,
        "message": format!("Email address {email} is invalid"),
        "error": "INVALID_EMAIL",
        "name": "email",
    }]);
    format!("Property values were not valid: {detail}")
}

/// The error object of one input of a batch.
fn input_error(category: &str, message: &str, input: &Input) -> Value {
    let mut context = json!({"ids": [input.id]});
    if let (Some(t), Some(o)) = (&input.trace, context.as_object_mut()) {
        o.insert("objectWriteTraceId".into(), json!([t]));
    }
    json!({
        "status": "error",
        "category": category,
        "message": message,
        "context": context,
    })
}

fn hs_error(status: u16, category: &str, message: &str) -> Response {
    json_response(
        status,
        &json!({
            "status": "error",
            "category": category,
            "message": message,
            "correlationId": correlation_id(),
        }),
    )
}

fn validation_error(message: &str) -> Response {
    hs_error(400, "VALIDATION_ERROR", message)
}

fn hs_unauthorized() -> Response {
    hs_error(
        401,
        "INVALID_AUTHENTICATION",
        "Authentication credentials not found. This API supports OAuth 2.0 authentication and \
         you can find more details at https://developers.hubspot.com/docs/methods/auth/oauth-overview",
    )
}

fn rate_limited(policy: &str, message: &str) -> Response {
    json_response(
        429,
        &json!({
            "status": "error",
            "message": message,
            "errorType": "RATE_LIMIT",
            "correlationId": correlation_id(),
            "policyName": policy,
        }),
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::devtools::sandbox_crm::{Faults, Scope};

    const BATCH: &str = "/crm/v3/objects/contacts/batch/upsert";

    async fn sandbox() -> (SandboxCrm, reqwest::Client) {
        let sb = SandboxCrm::start("127.0.0.1:0".parse().unwrap())
            .await
            .unwrap();
        (sb, reqwest::Client::new())
    }

    fn input(email: &str, props: Value, trace: &str) -> Value {
        json!({"idProperty": "email", "id": email, "properties": props, "objectWriteTraceId": trace})
    }

    async fn post(
        c: &reqwest::Client,
        sb: &SandboxCrm,
        path: &str,
        body: &Value,
    ) -> (u16, HeaderMap, Value) {
        let r = c
            .post(format!("{}{path}", sb.url()))
            .bearer_auth("pat-test")
            .json(body)
            .send()
            .await
            .unwrap();
        let status = r.status().as_u16();
        let headers = r.headers().clone();
        (status, headers, r.json().await.unwrap())
    }

    fn header(h: &HeaderMap, name: &str) -> u64 {
        h.get(name).unwrap().to_str().unwrap().parse().unwrap()
    }

    #[test]
    fn email_check() {
        assert!(plausible_email("a@b.com"));
        assert!(plausible_email("first.last+tag@sub.example.org"));
        for bad in [
            "",
            "a.b.com",
            "@b.com",
            "a@b",
            "a@@b.com",
            "a@b@c.com",
            "a b@c.com",
        ] {
            assert!(!plausible_email(bad), "{bad:?}");
        }
    }

    #[test]
    fn rolling_window_frees_as_requests_age() {
        let cfg = HubspotConfig {
            burst_limit: 2,
            interval: Duration::from_secs(10),
            ..HubspotConfig::default()
        };
        let mut l = Limits::default();
        let t0 = Instant::now();
        let s = Duration::from_secs(1);
        assert_eq!(l.hit(t0, &cfg), Verdict::Pass);
        assert_eq!(l.hit(t0 + s, &cfg), Verdict::Pass);
        assert_eq!(l.hit(t0 + 2 * s, &cfg), Verdict::Rolling);
        // The refused request counted too: at t0+10s the window still holds t0+1s and t0+2s.
        assert_eq!(l.hit(t0 + 10 * s, &cfg), Verdict::Rolling);
        assert_eq!(l.hit(t0 + 22 * s, &cfg), Verdict::Pass);
        assert_eq!(l.window.len(), 1, "old instants are dropped");
        assert_eq!(l.daily_used, 5);
    }

    #[tokio::test]
    async fn batch_upsert_creates_then_merges() {
        let (sb, c) = sandbox().await;
        let body = json!({"inputs": [
            input("Ann@Example.com", json!({"firstname": "Ann", "city": "Oslo"}), "t1"),
            input("bob@example.com", json!({"firstname": "Bob"}), "t2"),
        ]});
        let (status, h, v) = post(&c, &sb, BATCH, &body).await;
        assert_eq!(status, 200, "{v}");
        assert_eq!(v["status"], "COMPLETE");
        assert!(v["startedAt"].is_string() && v["completedAt"].is_string());
        let r = v["results"].as_array().unwrap();
        assert_eq!(r.len(), 2);
        assert_eq!(
            (&r[0]["id"], &r[0]["new"], &r[0]["objectWriteTraceId"]),
            (&json!("101"), &json!(true), &json!("t1"))
        );
        assert_eq!(r[0]["properties"]["email"], "ann@example.com");
        assert_eq!(r[1]["id"], "102");
        assert_eq!(header(&h, "x-hubspot-ratelimit-max"), 100);
        assert_eq!(header(&h, "x-hubspot-ratelimit-remaining"), 99);
        assert_eq!(
            header(&h, "x-hubspot-ratelimit-interval-milliseconds"),
            10_000
        );
        assert_eq!(header(&h, "x-hubspot-ratelimit-daily"), 250_000);
        assert_eq!(header(&h, "x-hubspot-ratelimit-daily-remaining"), 249_999);

        let again = json!({"inputs": [input("ann@example.com", json!({"city": "Bergen", "phone": "1"}), "t3")]});
        let (status, _, v) = post(&c, &sb, BATCH, &again).await;
        assert_eq!(status, 200);
        assert_eq!(v["results"][0]["id"], "101");
        assert_eq!(v["results"][0]["new"], false);
        assert_eq!(v["results"][0]["properties"]["firstname"], "Ann");
        assert_eq!(v["results"][0]["properties"]["city"], "Bergen");

        let ann = sb.hubspot_contact("ANN@example.COM").unwrap();
        assert_eq!(ann.writes, 2);
        assert_eq!(ann.email.as_deref(), Some("ann@example.com"));
        assert_eq!(ann.history.len(), 2);
        assert_eq!(ann.history[1]["city"], "Bergen");
        assert_eq!(sb.hubspot_contacts().len(), 2);
        let s = sb.hubspot_stats();
        assert_eq!(
            (
                s.requests,
                s.batch_calls,
                s.inputs,
                s.max_inputs_in_a_call,
                s.daily_used
            ),
            (2, 2, 3, 2, 2)
        );
        // The sandbox's own totals see these requests as well.
        assert_eq!(sb.stats().requests, 2);
    }

    #[tokio::test]
    async fn custom_id_property_finds_the_contact_and_keeps_emails_unique() {
        let (sb, c) = sandbox().await;
        let by_key = |key: &str, email: &str| {
            json!({"inputs": [{"idProperty": "leadrouter_key", "id": key,
                "properties": {"email": email}}]})
        };
        let (status, _, v) = post(&c, &sb, BATCH, &by_key("lr_1", "a@b.com")).await;
        assert_eq!((status, &v["results"][0]["new"]), (200, &json!(true)));
        let (_, _, v) = post(&c, &sb, BATCH, &by_key("LR_1", "a@b.com")).await;
        assert_eq!(v["results"][0]["new"], false, "found by the key");
        assert_eq!(sb.hubspot_contact("a@b.com").unwrap().writes, 2);
        assert_eq!(
            sb.hubspot_contact("a@b.com").unwrap().properties["leadrouter_key"],
            "LR_1"
        );
        // An email upsert finds the same contact.
        let (_, _, v) = post(
            &c,
            &sb,
            BATCH,
            &json!({"inputs": [input("a@b.com", json!({}), "t")]}),
        )
        .await;
        assert_eq!(v["results"][0]["id"], "101");
        // Another key with a taken email: a conflict for that input, partial (no email idProperty).
        let (status, _, v) = post(&c, &sb, BATCH, &by_key("lr_2", "a@b.com")).await;
        assert_eq!(status, 207);
        assert_eq!(v["numErrors"], 1);
        assert_eq!(v["errors"][0]["category"], "CONFLICT");
        assert_eq!(
            v["errors"][0]["message"],
            "Contact already exists. Existing ID: 101"
        );
        assert_eq!(sb.hubspot_contacts().len(), 1);
    }

    #[tokio::test]
    async fn auth_is_checked_and_401s_count_toward_nothing() {
        let (sb, c) = sandbox().await;
        let body = json!({"inputs": [input("a@b.com", json!({}), "t")]});
        let r = c
            .post(format!("{}{BATCH}", sb.url()))
            .json(&body)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 401);
        assert!(r.headers().get("x-hubspot-ratelimit-remaining").is_none());
        let v: Value = r.json().await.unwrap();
        assert_eq!(v["category"], "INVALID_AUTHENTICATION");
        assert_eq!(v["status"], "error");
        assert!(v["message"]
            .as_str()
            .unwrap()
            .starts_with("Authentication credentials not found."));
        assert_eq!(v["correlationId"].as_str().unwrap().len(), 36);

        sb.set_hubspot(HubspotConfig {
            token: Some("right".into()),
            ..HubspotConfig::default()
        });
        let (status, _, _) = post(&c, &sb, BATCH, &body).await;
        assert_eq!(status, 401, "pat-test is not the configured token");
        let r = c
            .post(format!("{}{BATCH}", sb.url()))
            .bearer_auth("right")
            .json(&body)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200);
        let s = sb.hubspot_stats();
        assert_eq!((s.unauthorized, s.daily_used, s.requests), (2, 1, 3));
    }

    #[tokio::test]
    async fn batch_cap_and_duplicates_write_nothing() {
        let (sb, c) = sandbox().await;
        let many: Vec<Value> = (0..101)
            .map(|i| input(&format!("u{i}@x.com"), json!({}), "t"))
            .collect();
        let (status, h, v) = post(&c, &sb, BATCH, &json!({"inputs": many})).await;
        assert_eq!(status, 400);
        assert_eq!(v["category"], "VALIDATION_ERROR");
        assert_eq!(v["message"], "Batch input limit of 100 exceeded");
        assert_eq!(
            header(&h, "x-hubspot-ratelimit-remaining"),
            99,
            "4xx after auth has headers"
        );
        assert_eq!(sb.hubspot_stats().max_inputs_in_a_call, 101);

        sb.set_hubspot(HubspotConfig {
            max_batch: 2,
            ..HubspotConfig::default()
        });
        let three: Vec<Value> = (0..3)
            .map(|i| input(&format!("u{i}@x.com"), json!({}), "t"))
            .collect();
        let (_, _, v) = post(&c, &sb, BATCH, &json!({"inputs": three})).await;
        assert_eq!(v["message"], "Batch input limit of 2 exceeded");

        let dup = json!({"inputs": [input("A@x.com", json!({}), "t1"), input("a@X.com", json!({}), "t2")]});
        let (status, _, v) = post(&c, &sb, BATCH, &dup).await;
        assert_eq!(status, 400);
        assert_eq!(v["category"], "VALIDATION_ERROR");
        assert_eq!(
            v["message"],
            "Duplicate IDs found in batch input: [a@x.com]"
        );
        assert!(sb.hubspot_contacts().is_empty());
    }

    #[tokio::test]
    async fn malformed_bodies_are_validation_errors() {
        let (sb, c) = sandbox().await;
        let r = c
            .post(format!("{}{BATCH}", sb.url()))
            .bearer_auth("t")
            .body("{not json")
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 400);
        let v: Value = r.json().await.unwrap();
        assert_eq!(v["category"], "VALIDATION_ERROR");
        assert!(v["message"]
            .as_str()
            .unwrap()
            .starts_with("Invalid input JSON"));
        for body in [
            json!({}),
            json!({"inputs": {}}),
            json!({"inputs": [{"id": "a@b.com"}]}),
            json!({"inputs": [{"idProperty": "email"}]}),
        ] {
            let (status, _, v) = post(&c, &sb, BATCH, &body).await;
            assert_eq!(status, 400, "{body}");
            assert!(
                v["message"]
                    .as_str()
                    .unwrap()
                    .starts_with("Invalid input JSON"),
                "{v}"
            );
        }
        assert!(sb.hubspot_contacts().is_empty());
    }

    #[tokio::test]
    async fn invalid_emails_all_or_none_by_default_partial_when_asked() {
        let (sb, c) = sandbox().await;
        sb.set_hubspot(HubspotConfig {
            reject_emails: vec!["Blocked@Example.com".into()],
            ..HubspotConfig::default()
        });
        let body = json!({"inputs": [
            input("ok@example.com", json!({"firstname": "Ok"}), "t1"),
            input("not-an-email", json!({}), "t2"),
            input("blocked@example.com", json!({}), "t3"),
        ]});
        let (status, _, v) = post(&c, &sb, BATCH, &body).await;
        assert_eq!(status, 400, "{v}");
        assert_eq!(v["message"], "Some inputs were invalid");
        assert_eq!(v["category"], "VALIDATION_ERROR");
        let errors = v["errors"].as_array().unwrap();
        assert_eq!(errors.len(), 2);
        assert_eq!(errors[0]["context"]["objectWriteTraceId"], json!(["t2"]));
        assert_eq!(errors[0]["context"]["ids"], json!(["not-an-email"]));
        let msg = errors[0]["message"].as_str().unwrap();
        let detail: Value = serde_json::from_str(
            msg.strip_prefix("Property values were not valid: ")
                .unwrap(),
        )
        .unwrap();
        assert_eq!(detail[0]["error"], "INVALID_EMAIL");
        assert_eq!(
            detail[0]["message"],
            "Email address not-an-email is invalid"
        );
        assert_eq!(errors[1]["context"]["ids"], json!(["blocked@example.com"]));
        assert!(
            sb.hubspot_contacts().is_empty(),
            "all-or-none wrote nothing"
        );

        sb.set_hubspot(HubspotConfig {
            partial: true,
            reject_emails: vec!["blocked@example.com".into()],
            ..HubspotConfig::default()
        });
        let (status, _, v) = post(&c, &sb, BATCH, &body).await;
        assert_eq!(status, 207, "{v}");
        assert_eq!(v["numErrors"], 2);
        assert_eq!(v["results"].as_array().unwrap().len(), 1);
        assert_eq!(v["results"][0]["objectWriteTraceId"], "t1");
        assert_eq!(sb.hubspot_contacts().len(), 1);
        assert!(sb.hubspot_contact("ok@example.com").is_some());
        assert_eq!(sb.hubspot_stats().rejected_inputs, 4);
    }

    #[tokio::test]
    async fn rolling_window_429_after_burst_limit() {
        let (sb, c) = sandbox().await;
        // A long interval: nothing ages out during the test, so no timing enters it.
        sb.set_hubspot(HubspotConfig {
            burst_limit: 3,
            interval: Duration::from_secs(600),
            ..HubspotConfig::default()
        });
        let body = json!({"inputs": [input("a@b.com", json!({}), "t")]});
        for left in [2, 1, 0] {
            let (status, h, _) = post(&c, &sb, BATCH, &body).await;
            assert_eq!(status, 200);
            assert_eq!(header(&h, "x-hubspot-ratelimit-remaining"), left);
            assert_eq!(header(&h, "x-hubspot-ratelimit-max"), 3);
            assert_eq!(
                header(&h, "x-hubspot-ratelimit-interval-milliseconds"),
                600_000
            );
        }
        let (status, h, v) = post(&c, &sb, BATCH, &body).await;
        assert_eq!(status, 429);
        assert_eq!(v["policyName"], "TEN_SECONDLY_ROLLING");
        assert_eq!(v["errorType"], "RATE_LIMIT");
        assert_eq!(
            v["message"],
            "You have reached your ten_secondly_rolling limit."
        );
        assert_eq!(header(&h, "x-hubspot-ratelimit-remaining"), 0);
        // The 429 counted toward the daily limit too.
        assert_eq!(
            header(&h, "x-hubspot-ratelimit-daily-remaining"),
            250_000 - 4
        );
        let s = sb.hubspot_stats();
        assert_eq!(
            (s.rate_limited, s.rate_limited_daily, s.batch_calls),
            (1, 0, 3)
        );
        assert_eq!(sb.hubspot_contact("a@b.com").unwrap().writes, 3);
    }

    #[tokio::test]
    async fn daily_limit_429_until_daily_reset() {
        let (sb, c) = sandbox().await;
        sb.set_hubspot(HubspotConfig {
            daily_limit: 2,
            ..HubspotConfig::default()
        });
        let body = json!({"inputs": [input("a@b.com", json!({}), "t")]});
        for left in [1, 0] {
            let (status, h, _) = post(&c, &sb, BATCH, &body).await;
            assert_eq!(status, 200);
            assert_eq!(header(&h, "x-hubspot-ratelimit-daily-remaining"), left);
        }
        let (status, h, v) = post(&c, &sb, BATCH, &body).await;
        assert_eq!(status, 429);
        assert_eq!(v["policyName"], "DAILY");
        assert_eq!(v["message"], "You have reached your daily limit.");
        assert_eq!(header(&h, "x-hubspot-ratelimit-daily"), 2);
        assert_eq!(header(&h, "x-hubspot-ratelimit-daily-remaining"), 0);
        assert_eq!(sb.hubspot_stats().rate_limited_daily, 1);

        let r = c
            .post(format!("{}/_sandbox/hubspot/daily_reset", sb.url()))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200);
        let v: Value = r.json().await.unwrap();
        assert_eq!(v["stats"]["daily_used"], 0);
        let (status, h, _) = post(&c, &sb, BATCH, &body).await;
        assert_eq!(status, 200);
        assert_eq!(header(&h, "x-hubspot-ratelimit-daily-remaining"), 1);
        sb.hubspot_daily_reset();
        assert_eq!(sb.hubspot_stats().daily_used, 0);
    }

    #[tokio::test]
    async fn crm_faults_apply_first_and_count_toward_no_limit() {
        let (sb, c) = sandbox().await;
        sb.set_faults_for(Scope::Crm, Faults::fail_next(1, 500));
        let body = json!({"inputs": [input("a@b.com", json!({}), "t")]});
        let (status, h, v) = post(&c, &sb, BATCH, &body).await;
        assert_eq!(status, 500);
        assert_eq!(v["error"], "sandbox_fault");
        assert!(h.get("x-hubspot-ratelimit-remaining").is_none());
        assert_eq!(sb.hubspot_stats().daily_used, 0);
        assert_eq!(sb.stats().faults_injected, 1);
        let (status, h, _) = post(&c, &sb, BATCH, &body).await;
        assert_eq!(status, 200);
        assert_eq!(header(&h, "x-hubspot-ratelimit-remaining"), 99);
        // An analytics fault leaves HubSpot alone.
        sb.set_faults_for(Scope::Analytics, Faults::fail_next(1, 503));
        assert_eq!(post(&c, &sb, BATCH, &body).await.0, 200);
        assert_eq!(sb.hubspot_stats().requests, 3);
    }

    #[tokio::test]
    async fn single_create_is_not_idempotent_and_other_routes_answer_json() {
        let (sb, c) = sandbox().await;
        let one = json!({"properties": {"firstname": "Ann"}});
        for id in ["101", "102"] {
            let (status, h, v) = post(&c, &sb, "/crm/v3/objects/contacts", &one).await;
            assert_eq!(status, 201);
            assert_eq!((&v["id"], &v["new"]), (&json!(id), &json!(true)));
            assert!(h.get("x-hubspot-ratelimit-daily-remaining").is_some());
        }
        let with_email = json!({"properties": {"email": "a@b.com"}});
        assert_eq!(
            post(&c, &sb, "/crm/v3/objects/contacts", &with_email)
                .await
                .0,
            201
        );
        let (status, _, v) = post(&c, &sb, "/crm/v3/objects/contacts", &with_email).await;
        assert_eq!((status, &v["category"]), (409, &json!("CONFLICT")));
        let bad = json!({"properties": {"email": "nope"}});
        let (status, _, v) = post(&c, &sb, "/crm/v3/objects/contacts", &bad).await;
        assert_eq!((status, &v["category"]), (400, &json!("VALIDATION_ERROR")));
        assert_eq!(sb.hubspot_stats().creates, 3);
        assert_eq!(sb.hubspot_contacts().len(), 3);

        let r = c
            .get(format!("{}/crm/v3/objects/contacts", sb.url()))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 405);
        assert_eq!(r.json::<Value>().await.unwrap()["status"], "error");
        let (status, _, v) = post(&c, &sb, "/crm/v3/objects/deals", &one).await;
        assert_eq!((status, &v["category"]), (404, &json!("NOT_FOUND")));
    }

    #[tokio::test]
    async fn control_routes_and_reset() {
        let (sb, c) = sandbox().await;
        let url = format!("{}/_sandbox/hubspot", sb.url());
        let r = c
            .post(&url)
            .body(r#"{"burst_limit":5,"interval":"1s","partial":true}"#)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200);
        let v: Value = r.json().await.unwrap();
        assert_eq!(v["config"]["burst_limit"], 5);
        assert_eq!(v["config"]["interval"], "1s");
        assert_eq!(v["config"]["max_batch"], 100, "left out: default");
        assert_eq!(sb.hubspot_config().interval, Duration::from_secs(1));
        assert!(sb.hubspot_config().partial);
        let r = c.post(&url).body(r#"{"burst":5}"#).send().await.unwrap();
        assert_eq!(r.status(), 400, "unknown fields are refused");

        post(
            &c,
            &sb,
            BATCH,
            &json!({"inputs": [input("a@b.com", json!({}), "t")]}),
        )
        .await;
        let v: Value = c.get(&url).send().await.unwrap().json().await.unwrap();
        assert_eq!(v["stats"]["batch_calls"], 1);
        let v: Value = c
            .get(format!("{url}/contacts"))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        assert_eq!(v[0]["email"], "a@b.com");
        assert_eq!(v[0]["writes"], 1);
        let r = c
            .get(format!("{url}/contacts/A%40b.com"))
            .send()
            .await
            .unwrap();
        assert_eq!(r.json::<Value>().await.unwrap()["id"], "101");
        let r = c
            .get(format!("{url}/contacts/x%40y.com"))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 404);

        sb.reset();
        assert_eq!(sb.hubspot_config(), HubspotConfig::default());
        assert_eq!(sb.hubspot_stats(), HubspotStats::default());
        assert!(sb.hubspot_contacts().is_empty());
    }
}
