//! The batcher against a scripted vendor: what each lead's verdict is, and which leads share a
//! call. (The vendors themselves are tested against the sandbox's personalities in
//! `tests/crm.rs`.)

use std::sync::Mutex as StdMutex;
use std::time::{Duration, Instant, SystemTime};

use super::*;

/// One scripted answer.
type Answer = Box<dyn Fn(&[&String]) -> CallOutcome + Send>;

/// A vendor that records each call's items and answers from a script (then success).
struct Scripted {
    calls: StdMutex<Vec<Vec<String>>>,
    script: StdMutex<VecDeque<Answer>>,
    /// Refuses any call holding this item, naming nobody (for the split).
    poison: Option<String>,
}

impl Scripted {
    fn new() -> Scripted {
        Scripted {
            calls: StdMutex::new(Vec::new()),
            script: StdMutex::new(VecDeque::new()),
            poison: None,
        }
    }
    fn then(self, f: impl Fn(&[&String]) -> CallOutcome + Send + 'static) -> Scripted {
        self.script.lock().expect("lock").push_back(Box::new(f));
        self
    }
}

fn ok(items: &[&String]) -> CallOutcome {
    CallOutcome::Answered(
        items
            .iter()
            .map(|i| {
                Ok(Delivered {
                    persisted_at: SystemTime::now(),
                    remote_id: Some(format!("id-{i}")),
                    created: Some(true),
                })
            })
            .collect(),
    )
}

#[async_trait::async_trait]
impl BatchApi for Arc<Scripted> {
    type Item = String;

    fn encode(&self, lead: &LeadRecord) -> Result<Encoded<String>, SinkError> {
        let email = lead
            .fields
            .get("email")
            .and_then(serde_json::Value::as_str)
            .unwrap_or_default()
            .to_string();
        Ok(Encoded {
            item: lead.key.clone(),
            bytes: 10,
            conflict_key: email,
        })
    }

    fn acquire(&self, _now: Instant) -> Pace {
        Pace::Go
    }

    async fn call(&self, items: Vec<&String>, _span: &tracing::Span) -> CallOutcome {
        self.calls
            .lock()
            .expect("lock")
            .push(items.iter().map(|s| s.to_string()).collect());
        if let Some(p) = &self.poison {
            if items.contains(&p) {
                return CallOutcome::Split(SinkError::permanent(
                    class::HTTP_4XX,
                    "bad input somewhere",
                ));
            }
        }
        let next = self.script.lock().expect("lock").pop_front();
        match next {
            Some(f) => f(&items),
            None => ok(&items),
        }
    }
}

fn lead(key: &str, email: &str) -> LeadRecord {
    LeadRecord {
        key: key.into(),
        sender: "s".into(),
        source_event_id: key.into(),
        schema: "lead.v1".into(),
        received_at: "2026-12-02T10:00:00.000Z".into(),
        fields: serde_json::json!({ "email": email })
            .as_object()
            .cloned()
            .unwrap_or_default(),
        flags: vec![],
        replay: false,
    }
}

fn settings(max_records: usize, linger_ms: u64) -> BatchSettings {
    BatchSettings {
        max_records,
        max_bytes: 1 << 20,
        linger: Duration::from_millis(linger_ms),
        max_in_flight: 1,
    }
}

/// Delivers every lead at once (as the pool's handlers would) and returns the verdicts.
async fn deliver_all(
    sink: &BatchSink<Arc<Scripted>>,
    leads: &[LeadRecord],
) -> Vec<Result<Delivered, SinkError>> {
    futures::future::join_all(leads.iter().map(|l| sink.deliver(l))).await
}

#[tokio::test]
async fn leads_share_calls_up_to_max_records_and_each_gets_its_own_verdict() {
    let api = Arc::new(Scripted::new());
    let sink = BatchSink::start("t", SinkOrdering::Append, settings(10, 50), api.clone());
    let leads: Vec<_> = (0..25)
        .map(|i| lead(&format!("k{i}"), &format!("e{i}@x.io")))
        .collect();
    let verdicts = deliver_all(&sink, &leads).await;
    for (l, v) in leads.iter().zip(&verdicts) {
        let d = v.as_ref().expect("delivered");
        assert_eq!(
            d.remote_id.as_deref(),
            Some(format!("id-{}", l.key).as_str())
        );
    }
    let calls = api.calls.lock().expect("lock").clone();
    assert!(calls.iter().all(|c| c.len() <= 10), "{calls:?}");
    let total: usize = calls.iter().map(Vec::len).sum();
    assert_eq!(total, 25, "every lead written once");
    assert!(
        calls.len() <= 4,
        "25 leads in at most 4 calls of 10: {calls:?}"
    );
}

#[tokio::test]
async fn one_email_is_never_twice_in_a_call_and_keeps_its_order() {
    let api = Arc::new(Scripted::new());
    let sink = BatchSink::start("t", SinkOrdering::Append, settings(10, 20), api.clone());
    let leads = vec![
        lead("v1", "same@x.io"),
        lead("other", "o@x.io"),
        lead("v2", "same@x.io"),
    ];
    let verdicts = deliver_all(&sink, &leads).await;
    assert!(verdicts.iter().all(Result::is_ok));
    let calls = api.calls.lock().expect("lock").clone();
    assert_eq!(calls.len(), 2, "{calls:?}");
    assert_eq!(calls[0], vec!["v1", "other"]);
    assert_eq!(
        calls[1],
        vec!["v2"],
        "the later version waits for the earlier call"
    );
}

#[tokio::test]
async fn a_refused_record_fails_alone_and_the_rest_go_again() {
    let api = Arc::new(Scripted::new().then(|items| {
        let bad = items.iter().position(|i| *i == "k3").unwrap_or(0);
        CallOutcome::Refused(vec![(
            bad,
            SinkError::permanent(class::HTTP_4XX, "invalid email"),
        )])
    }));
    let sink = BatchSink::start("t", SinkOrdering::Append, settings(10, 20), api.clone());
    let leads: Vec<_> = (0..6)
        .map(|i| lead(&format!("k{i}"), &format!("e{i}@x.io")))
        .collect();
    let verdicts = deliver_all(&sink, &leads).await;
    for (l, v) in leads.iter().zip(&verdicts) {
        if l.key == "k3" {
            assert!(v.as_ref().expect_err("refused").is_permanent());
        } else {
            assert!(v.is_ok(), "{}: {v:?}", l.key);
        }
    }
    let calls = api.calls.lock().expect("lock").clone();
    assert_eq!(calls.len(), 2);
    assert_eq!(
        calls[1].len(),
        5,
        "the other five again, without the refused one"
    );
}

#[tokio::test]
async fn a_refusal_that_names_nobody_is_split_until_the_bad_record_is_alone() {
    let mut scripted = Scripted::new();
    scripted.poison = Some("k5".into());
    let api = Arc::new(scripted);
    let sink = BatchSink::start("t", SinkOrdering::Append, settings(8, 20), api.clone());
    let leads: Vec<_> = (0..8)
        .map(|i| lead(&format!("k{i}"), &format!("e{i}@x.io")))
        .collect();
    let verdicts = deliver_all(&sink, &leads).await;
    for (l, v) in leads.iter().zip(&verdicts) {
        assert_eq!(v.is_err(), l.key == "k5", "{}: {v:?}", l.key);
    }
    let calls = api.calls.lock().expect("lock").clone();
    // 8 -> 4+4 -> 2+2 -> 1+1: log2(8) splits on the bad side, each good half written once.
    let written: usize = calls
        .iter()
        .filter(|c| !c.iter().any(|i| i == "k5"))
        .map(Vec::len)
        .sum();
    assert_eq!(written, 7, "{calls:?}");
    assert!(
        calls.len() <= 7,
        "bisection, not one call per lead: {calls:?}"
    );
}

#[tokio::test]
async fn a_short_throttle_is_waited_out_and_costs_the_leads_nothing() {
    let api = Arc::new(Scripted::new().then(|_| CallOutcome::Throttled {
        wait: Duration::from_millis(30),
        policy: "TEN_SECONDLY_ROLLING",
    }));
    let sink = BatchSink::start("t", SinkOrdering::Append, settings(10, 5), api.clone());
    let leads: Vec<_> = (0..3)
        .map(|i| lead(&format!("k{i}"), &format!("e{i}@x.io")))
        .collect();
    let verdicts = deliver_all(&sink, &leads).await;
    assert!(verdicts.iter().all(Result::is_ok), "{verdicts:?}");
    let calls = api.calls.lock().expect("lock").clone();
    assert_eq!(calls.len(), 2, "the same batch again: {calls:?}");
    assert_eq!(calls[0], calls[1]);
}

#[tokio::test]
async fn a_spent_budget_hands_the_leads_back_as_throttled() {
    let api = Arc::new(Scripted::new().then(|_| CallOutcome::Spent {
        wait: Duration::from_secs(900),
        policy: "DAILY",
    }));
    let sink = BatchSink::start("t", SinkOrdering::Append, settings(10, 5), api.clone());
    let leads: Vec<_> = (0..3)
        .map(|i| lead(&format!("k{i}"), &format!("e{i}@x.io")))
        .collect();
    for v in deliver_all(&sink, &leads).await {
        let e = v.expect_err("handed back");
        assert!(e.is_throttled(), "{e}");
        assert_eq!(e.retry_after(), Some(Duration::from_secs(900)));
    }
}

#[tokio::test]
async fn a_whole_call_failure_reaches_every_lead_of_the_batch() {
    let api = Arc::new(
        Scripted::new()
            .then(|_| CallOutcome::Failed(SinkError::transient(class::HTTP_5XX, "HTTP 503"))),
    );
    let sink = BatchSink::start("t", SinkOrdering::Append, settings(10, 20), api.clone());
    let leads: Vec<_> = (0..4)
        .map(|i| lead(&format!("k{i}"), &format!("e{i}@x.io")))
        .collect();
    for v in deliver_all(&sink, &leads).await {
        let e = v.expect_err("failed");
        assert!(!e.is_permanent() && !e.is_throttled(), "{e}");
    }
}
