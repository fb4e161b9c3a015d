//! The simulated form vendor: generates the drill's leads and posts them signed, the way a real
//! vendor does in a storm. It retries on 5xx, 429, timeouts and connection errors with its own
//! capped exponential backoff and full jitter (honouring `Retry-After`), gives up after a fixed
//! number of attempts, never retries a 4xx, and sends a share of every lead's submits twice or
//! three times at nearly the same moment (double clicks, a retry storm on its side).
//!
//! A duplicate submit carries the same event id and body as the first: that is what a vendor's
//! own redelivery looks like, and what an exactly-once router must collapse.

use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering::Relaxed};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use bytes::Bytes;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde::Serialize;
use serde_json::{json, Map, Value};
use tokio::sync::{watch, Semaphore};

use crate::intake::envelope::{email_hash, idempotency_key};
use crate::intake::schemes::{SignInput, Verifier};

/// What a generated payload is meant to do.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum LeadKind {
    /// A good lead: must reach the CRM exactly once.
    Valid,
    /// Valid JSON that fails `lead.v1` (no email, or not an email): accepted, then dead-lettered.
    SchemaInvalid,
    /// Not JSON at all: the edge refuses it with 400 and it is never stored.
    Unparseable,
}

/// One lead as the vendor holds it.
#[derive(Debug, Clone)]
pub struct LeadSpec {
    pub event_id: String,
    /// The email the payload carries (empty when it has none).
    pub email: String,
    /// The idempotency key leadrouter derives for it; the CRM records are keyed by it.
    pub key: String,
    pub kind: LeadKind,
    pub body: Bytes,
    /// How many times the vendor submits it at once (1 = no duplicate).
    pub copies: u8,
}

/// The sender id the drill's router is configured with.
pub const SENDER: &str = "drill";

/// The key leadrouter derives for a drill lead (the CRM's bookkeeping is keyed by it).
pub fn lead_key(event_id: &str, email: &str) -> String {
    let mut fields = Map::new();
    if !email.is_empty() {
        fields.insert("email".into(), Value::String(email.to_string()));
    }
    idempotency_key(SENDER, event_id, &email_hash(&fields))
}

/// How the leads are generated.
#[derive(Debug, Clone)]
pub struct Plan {
    pub leads: usize,
    pub duplicate_share: f64,
    pub malformed_share: f64,
    /// Share of good leads that reuse an earlier lead's email (a shared inbox): a real, second
    /// lead, which a naive email dedupe wrongly drops.
    pub shared_inbox_share: f64,
    pub seed: u64,
    /// Prefix of event ids, unique per run.
    pub run_id: String,
}

/// Of the malformed share, this part is not even JSON; the rest fails the schema.
const UNPARSEABLE_PART: f64 = 0.2;

pub fn generate(plan: &Plan, sender: &str) -> Vec<LeadSpec> {
    let mut rng = StdRng::seed_from_u64(plan.seed);
    let mut out: Vec<LeadSpec> = Vec::with_capacity(plan.leads);
    let mut valid_emails: Vec<usize> = Vec::new();
    for i in 0..plan.leads {
        let event_id = format!("{}-{i:06}", plan.run_id);
        let roll: f64 = rng.random();
        let kind = if roll < plan.malformed_share * UNPARSEABLE_PART {
            LeadKind::Unparseable
        } else if roll < plan.malformed_share {
            LeadKind::SchemaInvalid
        } else {
            LeadKind::Valid
        };
        let copies = if rng.random::<f64>() < plan.duplicate_share {
            if rng.random::<f64>() < 0.2 {
                3
            } else {
                2
            }
        } else {
            1
        };
        let email = match kind {
            LeadKind::Valid => {
                if !valid_emails.is_empty() && rng.random::<f64>() < plan.shared_inbox_share {
                    let back = rng.random_range(0..valid_emails.len().min(50));
                    out[valid_emails[valid_emails.len() - 1 - back]]
                        .email
                        .clone()
                } else {
                    format!("lead{i}.{}@drill.example.com", plan.run_id)
                }
            }
            LeadKind::SchemaInvalid if i % 2 == 0 => String::new(),
            LeadKind::SchemaInvalid => "not-an-email".to_string(),
            LeadKind::Unparseable => String::new(),
        };
        let mut fields = Map::new();
        if !email.is_empty() {
            fields.insert("email".into(), Value::String(email.clone()));
        }
        let key = idempotency_key(sender, &event_id, &email_hash(&fields));
        let body = match kind {
            LeadKind::Unparseable => {
                Bytes::from(format!(r#"{{"email":"lead{i}@drill.example.com","first_"#))
            }
            _ => {
                let mut doc = json!({
                    "first_name": "Drill",
                    "last_name": format!("Lead {i}"),
                    "phone": format!("+1650555{:04}", i % 10_000),
                    "company": "Acme Storm Testing",
                    "utm_source": "drill",
                    "utm_campaign": "retry-storm",
                });
                if !email.is_empty() {
                    doc["email"] = Value::String(email.clone());
                }
                Bytes::from(doc.to_string())
            }
        };
        if kind == LeadKind::Valid {
            valid_emails.push(i);
        }
        out.push(LeadSpec {
            event_id,
            email,
            key,
            kind,
            body,
            copies,
        });
    }
    out
}

/// The vendor's own retry policy.
#[derive(Debug, Clone)]
pub struct RetryPolicy {
    pub max_attempts: u32,
    pub base: Duration,
    pub cap: Duration,
    /// How long the vendor waits for an answer before it counts a timeout.
    pub timeout: Duration,
    /// Concurrent requests the vendor's delivery workers allow.
    pub max_in_flight: usize,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        RetryPolicy {
            max_attempts: 15,
            base: Duration::from_millis(200),
            cap: Duration::from_secs(5),
            timeout: Duration::from_secs(5),
            max_in_flight: 1000,
        }
    }
}

/// Live counters, for progress and the report.
#[derive(Debug, Default)]
pub struct Counters {
    pub scheduled: AtomicU64,
    pub requests: AtomicU64,
    pub accepted: AtomicU64,
    pub retries: AtomicU64,
    pub status_5xx: AtomicU64,
    pub status_429: AtomicU64,
    pub status_4xx: AtomicU64,
    pub timeouts: AtomicU64,
    pub conn_errors: AtomicU64,
    pub gave_up: AtomicU64,
    pub leads_done: AtomicU64,
    /// When the newest request that got a 2xx was sent, and whether the vendor is done: a
    /// fault's measurement awaits "a request sent after the fault was accepted" on it.
    pub answered: watch::Sender<Answered>,
}

/// See [`Counters::answered`].
#[derive(Debug, Clone, Copy, Default)]
pub struct Answered {
    pub last_accepted_sent: Option<Instant>,
    pub finished: bool,
}

impl Counters {
    /// Awaits a 2xx for a request sent at or after `since`: intake answers again. Returns how
    /// long after `since` that answer came, or `None` when the vendor finished first or `limit`
    /// passed (no request to measure with).
    pub async fn accepted_after(&self, since: Instant, limit: Duration) -> Option<Duration> {
        let mut rx = self.answered.subscribe();
        let seen = tokio::time::timeout(
            limit,
            rx.wait_for(|a| a.finished || a.last_accepted_sent.is_some_and(|t| t >= since)),
        )
        .await;
        match seen {
            Ok(Ok(a)) if a.last_accepted_sent.is_some_and(|t| t >= since) => Some(since.elapsed()),
            _ => None,
        }
    }
}

#[derive(Debug, Clone, Copy, Default, Serialize)]
pub struct CounterSnapshot {
    pub requests: u64,
    pub accepted_answers: u64,
    pub retries: u64,
    pub status_5xx: u64,
    pub status_429: u64,
    pub status_4xx: u64,
    pub timeouts: u64,
    pub connection_errors: u64,
    pub gave_up: u64,
}

impl Counters {
    pub fn snapshot(&self) -> CounterSnapshot {
        CounterSnapshot {
            requests: self.requests.load(Relaxed),
            accepted_answers: self.accepted.load(Relaxed),
            retries: self.retries.load(Relaxed),
            status_5xx: self.status_5xx.load(Relaxed),
            status_429: self.status_429.load(Relaxed),
            status_4xx: self.status_4xx.load(Relaxed),
            timeouts: self.timeouts.load(Relaxed),
            connection_errors: self.conn_errors.load(Relaxed),
            gave_up: self.gave_up.load(Relaxed),
        }
    }
}

/// How one lead ended, from the vendor's side.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Answer {
    /// At least one submit got a 2xx.
    Accepted,
    /// Every submit got a 4xx other than 408/429 (not retried).
    Refused(u16),
    /// Retries ran out without a 2xx.
    GaveUp,
}

#[derive(Debug, Clone, Copy)]
pub struct LeadOutcome {
    pub answer: Answer,
    /// The first attempt of the first submit.
    pub first_sent: SystemTime,
    pub attempts: u32,
}

/// Where the vendor's requests go: the intake addresses of the routers, behind what stands for
/// a load balancer. Requests go round-robin over the live ones; a retry goes to another one than
/// the attempt that failed, as a balancer's next pick would. The drill marks a router down when
/// it kills it and up again when its `/readyz` answers (the balancer's health check).
#[derive(Debug)]
pub struct Balancer {
    urls: Vec<String>,
    live: Vec<AtomicBool>,
    next: AtomicUsize,
    /// Requests sent to each address.
    sent: Vec<AtomicU64>,
}

impl Balancer {
    pub fn new(urls: Vec<String>) -> Balancer {
        Balancer {
            live: urls.iter().map(|_| AtomicBool::new(true)).collect(),
            sent: urls.iter().map(|_| AtomicU64::new(0)).collect(),
            next: AtomicUsize::new(0),
            urls,
        }
    }

    pub fn set_live(&self, i: usize, live: bool) {
        if let Some(l) = self.live.get(i) {
            l.store(live, Relaxed);
        }
    }

    /// Requests sent to each address so far.
    pub fn sent(&self) -> Vec<u64> {
        self.sent.iter().map(|n| n.load(Relaxed)).collect()
    }

    /// The next live address, not `avoid` when another one is live. With none live, the next
    /// one anyway: the request fails and the vendor backs off, as behind a balancer with no
    /// healthy backend.
    fn pick(&self, avoid: Option<usize>) -> usize {
        let n = self.urls.len().max(1);
        let start = self.next.fetch_add(1, Relaxed);
        let live = |i: usize| self.live.get(i).is_some_and(|l| l.load(Relaxed));
        let candidates = (0..n).map(|k| (start + k) % n);
        let pick = candidates
            .clone()
            .find(|i| live(*i) && Some(*i) != avoid)
            .or_else(|| candidates.clone().find(|i| live(*i)))
            .unwrap_or(start % n);
        if let Some(c) = self.sent.get(pick) {
            c.fetch_add(1, Relaxed);
        }
        pick
    }
}

/// Sends the plan's leads at `rate` per second through its [`Balancer`] and returns one
/// outcome per lead, in plan order.
pub struct Vendor {
    http: reqwest::Client,
    balancer: Arc<Balancer>,
    verifier: Arc<Verifier>,
    policy: RetryPolicy,
    pub counters: Arc<Counters>,
    permits: Arc<Semaphore>,
}

enum Try {
    Done(Answer),
    Retry(Option<Duration>),
}

impl Vendor {
    /// `urls`: the intake addresses it spreads its requests over (one for one router).
    pub fn new(
        urls: Vec<String>,
        verifier: Verifier,
        policy: RetryPolicy,
    ) -> reqwest::Result<Vendor> {
        let http = reqwest::Client::builder()
            .timeout(policy.timeout)
            .connect_timeout(Duration::from_secs(1))
            .pool_max_idle_per_host(policy.max_in_flight)
            .build()?;
        Ok(Vendor {
            http,
            balancer: Arc::new(Balancer::new(urls)),
            verifier: Arc::new(verifier),
            permits: Arc::new(Semaphore::new(policy.max_in_flight.max(1))),
            policy,
            counters: Arc::new(Counters::default()),
        })
    }

    pub fn balancer(&self) -> Arc<Balancer> {
        self.balancer.clone()
    }

    pub async fn run(self: Arc<Self>, leads: Arc<Vec<LeadSpec>>, rate: f64) -> Vec<LeadOutcome> {
        let start = tokio::time::Instant::now();
        let interval = Duration::from_secs_f64(1.0 / rate.max(0.001));
        let mut set = tokio::task::JoinSet::new();
        for idx in 0..leads.len() {
            tokio::time::sleep_until(start + interval.mul_f64(idx as f64)).await;
            self.counters.scheduled.fetch_add(1, Relaxed);
            let me = self.clone();
            let leads = leads.clone();
            set.spawn(async move { (idx, me.send_lead(&leads[idx]).await) });
        }
        let unsent = LeadOutcome {
            answer: Answer::GaveUp,
            first_sent: SystemTime::now(),
            attempts: 0,
        };
        let mut out = vec![unsent; leads.len()];
        while let Some(r) = set.join_next().await {
            // A panicking send task leaves its lead as "gave up": counted, never hidden.
            if let Ok((idx, o)) = r {
                out[idx] = o;
            }
        }
        // Wakes a fault still waiting for an answer: none will come now.
        self.counters.answered.send_modify(|a| a.finished = true);
        out
    }

    async fn send_lead(&self, lead: &LeadSpec) -> LeadOutcome {
        let first_sent = SystemTime::now();
        let copies = (0..lead.copies).map(|copy| async move {
            if copy > 0 {
                // The double click lands a moment after the first.
                let gap = rand::rng().random_range(0..300);
                tokio::time::sleep(Duration::from_millis(gap)).await;
            }
            self.submit(lead).await
        });
        let results = futures::future::join_all(copies).await;
        let attempts = results.iter().map(|(_, n)| n).sum();
        let answer = if results.iter().any(|(a, _)| *a == Answer::Accepted) {
            Answer::Accepted
        } else if let Some((a, _)) = results.iter().find(|(a, _)| *a == Answer::GaveUp) {
            *a
        } else {
            results[0].0
        };
        if answer == Answer::GaveUp {
            self.counters.gave_up.fetch_add(1, Relaxed);
        }
        self.counters.leads_done.fetch_add(1, Relaxed);
        LeadOutcome {
            answer,
            first_sent,
            attempts,
        }
    }

    /// One submit with the vendor's retries; returns the answer and the attempts made.
    async fn submit(&self, lead: &LeadSpec) -> (Answer, u32) {
        let mut attempt = 0;
        let mut failed_at = None;
        loop {
            attempt += 1;
            let target = self.balancer.pick(failed_at);
            failed_at = Some(target);
            let retry_after = match self.attempt(lead, target).await {
                Try::Done(a) => return (a, attempt),
                Try::Retry(ra) => ra,
            };
            if attempt >= self.policy.max_attempts {
                return (Answer::GaveUp, attempt);
            }
            self.counters.retries.fetch_add(1, Relaxed);
            let ceiling = self
                .policy
                .base
                .saturating_mul(1 << (attempt - 1).min(16))
                .min(self.policy.cap);
            let jitter = rand::rng().random_range(0.0..=1.0);
            let delay = retry_after
                .map(|ra| ra.min(self.policy.cap * 2))
                .unwrap_or_else(|| ceiling.mul_f64(jitter));
            tokio::time::sleep(delay).await;
        }
    }

    async fn attempt(&self, lead: &LeadSpec, target: usize) -> Try {
        let Ok(_permit) = self.permits.acquire().await else {
            return Try::Done(Answer::GaveUp);
        };
        let Some(url) = self.balancer.urls.get(target) else {
            return Try::Done(Answer::GaveUp);
        };
        // Signed afresh per attempt, as vendors do (the timestamp is part of the signature).
        let signed = match self.verifier.sign(&SignInput {
            body: &lead.body,
            now: SystemTime::now(),
            event_id: &lead.event_id,
            method: "POST",
            url,
        }) {
            Ok(s) => s,
            Err(_) => return Try::Done(Answer::Refused(0)),
        };
        let mut req = self
            .http
            .post(url)
            .header(reqwest::header::CONTENT_TYPE, "application/json");
        for (k, v) in &signed.headers {
            req = req.header(k.as_str(), v.as_str());
        }
        self.counters.requests.fetch_add(1, Relaxed);
        let started = Instant::now();
        match req.body(lead.body.clone()).send().await {
            Ok(resp) => {
                let status = resp.status().as_u16();
                let retry_after = resp
                    .headers()
                    .get(reqwest::header::RETRY_AFTER)
                    .and_then(|v| v.to_str().ok())
                    .and_then(|v| v.trim().parse::<u64>().ok())
                    .map(Duration::from_secs);
                // Drain the body so the connection goes back to the pool.
                let _ = resp.bytes().await;
                match status {
                    200..=299 => {
                        self.counters.accepted.fetch_add(1, Relaxed);
                        self.counters.answered.send_if_modified(|a| {
                            let newer = a.last_accepted_sent.is_none_or(|t| started > t);
                            if newer {
                                a.last_accepted_sent = Some(started);
                            }
                            newer
                        });
                        Try::Done(Answer::Accepted)
                    }
                    429 => {
                        self.counters.status_429.fetch_add(1, Relaxed);
                        Try::Retry(retry_after)
                    }
                    408 => {
                        self.counters.status_4xx.fetch_add(1, Relaxed);
                        Try::Retry(None)
                    }
                    400..=499 => {
                        self.counters.status_4xx.fetch_add(1, Relaxed);
                        Try::Done(Answer::Refused(status))
                    }
                    _ => {
                        self.counters.status_5xx.fetch_add(1, Relaxed);
                        Try::Retry(retry_after)
                    }
                }
            }
            Err(e) => {
                if e.is_timeout() || started.elapsed() >= self.policy.timeout {
                    self.counters.timeouts.fetch_add(1, Relaxed);
                } else {
                    self.counters.conn_errors.fetch_add(1, Relaxed);
                }
                Try::Retry(None)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn plan(leads: usize) -> Plan {
        Plan {
            leads,
            duplicate_share: 0.3,
            malformed_share: 0.05,
            shared_inbox_share: 0.01,
            seed: 7,
            run_id: "t".into(),
        }
    }

    #[test]
    fn generation_is_deterministic_and_mixes_the_kinds() {
        let a = generate(&plan(4000), "drill");
        let b = generate(&plan(4000), "drill");
        assert_eq!(a.len(), 4000);
        assert!(a
            .iter()
            .zip(&b)
            .all(|(x, y)| x.key == y.key && x.body == y.body && x.copies == y.copies));
        let count = |k: LeadKind| a.iter().filter(|l| l.kind == k).count();
        let (schema, unparseable) = (count(LeadKind::SchemaInvalid), count(LeadKind::Unparseable));
        assert!(schema > 80 && schema < 240, "schema-invalid: {schema}");
        assert!(
            unparseable > 10 && unparseable < 80,
            "unparseable: {unparseable}"
        );
        let dups = a.iter().filter(|l| l.copies > 1).count();
        assert!(dups > 1000 && dups < 1400, "duplicated leads: {dups}");
        let keys: std::collections::HashSet<_> = a.iter().map(|l| &l.key).collect();
        assert_eq!(keys.len(), a.len(), "every lead has its own key");
    }

    #[test]
    fn the_balancer_spreads_skips_a_down_router_and_retries_elsewhere() {
        let b = Balancer::new(vec!["a".into(), "b".into(), "c".into()]);
        let picks: Vec<usize> = (0..6).map(|_| b.pick(None)).collect();
        assert_eq!(picks, [0, 1, 2, 0, 1, 2]);
        b.set_live(1, false);
        assert!((0..6).all(|_| b.pick(None) != 1));
        // A retry after a failure at 0 goes to the other live one.
        assert!((0..6).all(|_| b.pick(Some(0)) == 2));
        // With one live router, a retry goes back to it.
        b.set_live(2, false);
        assert!((0..3).all(|_| b.pick(Some(0)) == 0));
        // None live: still somewhere (the request fails and the vendor backs off).
        b.set_live(0, false);
        assert!(b.pick(None) < 3);
        assert_eq!(b.sent().iter().sum::<u64>(), 6 + 6 + 6 + 3 + 1);
        let one = Balancer::new(vec!["only".into()]);
        one.set_live(0, false);
        assert_eq!(one.pick(Some(0)), 0);
    }

    #[tokio::test]
    async fn a_fault_waits_for_an_answer_to_a_request_sent_after_it() {
        let c = Counters::default();
        let before = Instant::now();
        c.answered
            .send_modify(|a| a.last_accepted_sent = Some(before));
        let since = Instant::now();
        assert_eq!(
            c.accepted_after(since, Duration::from_millis(50)).await,
            None,
            "an answer to an earlier request does not count"
        );
        let since = Instant::now();
        c.answered
            .send_modify(|a| a.last_accepted_sent = Some(Instant::now()));
        assert!(c
            .accepted_after(since, Duration::from_secs(1))
            .await
            .is_some());
        let since = Instant::now();
        c.answered.send_modify(|a| a.finished = true);
        assert_eq!(c.accepted_after(since, Duration::from_secs(5)).await, None);
    }

    #[test]
    fn payloads_match_their_kind() {
        for l in generate(&plan(2000), "drill") {
            let parsed: Result<Value, _> = serde_json::from_slice(&l.body);
            match l.kind {
                LeadKind::Unparseable => assert!(parsed.is_err()),
                LeadKind::Valid => {
                    let v = parsed.expect("valid lead is JSON");
                    assert_eq!(v["email"], Value::String(l.email.clone()));
                    assert!(l.email.contains('@'));
                }
                LeadKind::SchemaInvalid => {
                    let v = parsed.expect("schema-invalid lead is JSON");
                    assert!(v.get("email").is_none() || v["email"] == "not-an-email");
                }
            }
        }
    }
}
