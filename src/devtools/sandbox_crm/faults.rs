//! Fault injection: the settings of a scope, and what they make of one request.

use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant, SystemTime};

use serde::{Deserialize, Serialize};
use serde_json::json;
use warp::http::HeaderValue;
use warp::reply::Response;

use super::wire::json_response;

/// How the sandbox misbehaves.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum FaultMode {
    #[default]
    Healthy,
    /// Every request: 500.
    Error500,
    /// Every request: 429 with `Retry-After` (`retry_after_secs`).
    Rate429,
    /// Hold every request for `hold` (default 1 h), so the client times out.
    Timeout,
    /// Drop the connection without a response (TCP RST).
    Reset,
    /// Cycle healthy, 500, 429, slow (`slow` extra latency), timeout; `flap_period` each.
    Flap,
}

/// Fault settings of one scope. JSON: every field optional, durations as humantime strings,
/// e.g. `{"mode":"rate429","retry_after_secs":7}` or `{"fail_next":3,"latency":"20ms"}`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Faults {
    pub mode: FaultMode,
    /// Added to every request of the scope (faulted or not).
    #[serde(with = "humantime_serde")]
    pub latency: Duration,
    /// `Retry-After` on 429 (and on `fail_status` 429/503).
    pub retry_after_secs: u64,
    /// Send `Retry-After` as an HTTP-date (now + `retry_after_secs`) instead of seconds.
    pub retry_after_date: bool,
    /// How long the `timeout` mode holds a request.
    #[serde(with = "humantime_serde")]
    pub hold: Duration,
    /// Length of each `flap` phase.
    #[serde(with = "humantime_serde")]
    pub flap_period: Duration,
    /// Extra latency of the `flap` mode's slow phase.
    #[serde(with = "humantime_serde")]
    pub slow: Duration,
    /// Answer the next N requests with `fail_status`, then apply `mode` again.
    pub fail_next: u32,
    pub fail_status: u16,
}

impl Default for Faults {
    fn default() -> Self {
        Faults {
            mode: FaultMode::Healthy,
            latency: Duration::ZERO,
            retry_after_secs: 1,
            retry_after_date: false,
            hold: Duration::from_secs(3600),
            flap_period: Duration::from_secs(2),
            slow: Duration::from_secs(1),
            fail_next: 0,
            fail_status: 500,
        }
    }
}

impl Faults {
    pub fn healthy() -> Faults {
        Faults::default()
    }
    pub fn mode(mode: FaultMode) -> Faults {
        Faults {
            mode,
            ..Faults::default()
        }
    }
    /// The next `n` requests get `status`, then healthy.
    pub fn fail_next(n: u32, status: u16) -> Faults {
        Faults {
            fail_next: n,
            fail_status: status,
            ..Faults::default()
        }
    }
}

/// Which paths a fault setting applies to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum Scope {
    #[default]
    All,
    /// `/leads...`
    Crm,
    /// `/v1/...`
    Analytics,
}

pub(super) struct ScopeState {
    pub(super) faults: Faults,
    pub(super) since: Instant,
    pub(super) fail_left: u32,
}

impl ScopeState {
    pub(super) fn new(faults: Faults) -> ScopeState {
        ScopeState {
            fail_left: faults.fail_next,
            faults,
            since: Instant::now(),
        }
    }
}

/// What to do with a request after counting it.
pub(super) enum Action {
    Pass,
    Status {
        code: u16,
        retry_after: Option<u64>,
        date: bool,
    },
    Hold(Duration),
    Reset,
}

/// Decides the fault for one request of a scope; consumes `fail_next`.
pub(super) fn decide(sc: &mut ScopeState) -> (Duration, Action) {
    let f = &sc.faults;
    let mut latency = f.latency;
    let with_ra = |code: u16| Action::Status {
        code,
        retry_after: matches!(code, 429 | 503).then_some(f.retry_after_secs),
        date: f.retry_after_date,
    };
    if sc.fail_left > 0 {
        sc.fail_left -= 1;
        return (latency, with_ra(f.fail_status));
    }
    let action = match f.mode {
        FaultMode::Healthy => Action::Pass,
        FaultMode::Error500 => with_ra(500),
        FaultMode::Rate429 => with_ra(429),
        FaultMode::Timeout => Action::Hold(f.hold),
        FaultMode::Reset => Action::Reset,
        FaultMode::Flap => {
            let period = f.flap_period.as_nanos().max(1);
            match (sc.since.elapsed().as_nanos() / period) % 5 {
                0 => Action::Pass,
                1 => with_ra(500),
                2 => with_ra(429),
                3 => {
                    latency += f.slow;
                    Action::Pass
                }
                _ => Action::Hold(f.hold),
            }
        }
    };
    (latency, action)
}

/// Applies latency and the fault; `None` means go on with the real operation.
pub(super) async fn apply(
    latency: Duration,
    action: Action,
    reset: &AtomicBool,
) -> Option<Response> {
    if !latency.is_zero() {
        tokio::time::sleep(latency).await;
    }
    match action {
        Action::Pass => None,
        Action::Status {
            code,
            retry_after,
            date,
        } => {
            let mut resp = json_response(code, &json!({"error": "sandbox_fault", "status": code}));
            if let Some(secs) = retry_after {
                let v = if date {
                    httpdate::fmt_http_date(SystemTime::now() + Duration::from_secs(secs))
                } else {
                    secs.to_string()
                };
                if let Ok(v) = HeaderValue::from_str(&v) {
                    resp.headers_mut()
                        .insert(warp::http::header::RETRY_AFTER, v);
                }
            }
            Some(resp)
        }
        Action::Hold(d) => {
            tokio::time::sleep(d).await;
            Some(json_response(
                504,
                &json!({"error": "sandbox_hold_elapsed"}),
            ))
        }
        Action::Reset => {
            reset.store(true, Ordering::Relaxed);
            // Never reaches the client: the connection wrapper fails hyper's write of it.
            Some(json_response(599, &json!({"error": "sandbox_reset"})))
        }
    }
}

pub(super) fn is_fault(action: &Action) -> bool {
    !matches!(action, Action::Pass)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fail_next_then_mode() {
        let mut sc = ScopeState::new(Faults {
            fail_next: 2,
            fail_status: 503,
            retry_after_secs: 4,
            ..Faults::default()
        });
        for _ in 0..2 {
            match decide(&mut sc).1 {
                Action::Status {
                    code: 503,
                    retry_after: Some(4),
                    ..
                } => {}
                _ => panic!("expected 503"),
            }
        }
        assert!(matches!(decide(&mut sc).1, Action::Pass));
    }

    #[test]
    fn flap_cycles_through_its_phases() {
        let period = Duration::from_secs(1);
        let mut sc = ScopeState::new(Faults {
            flap_period: period,
            slow: Duration::from_millis(300),
            ..Faults::mode(FaultMode::Flap)
        });
        let phase = |sc: &mut ScopeState, n: u32| {
            sc.since = Instant::now() - period * n - period / 2;
            decide(sc)
        };
        assert!(matches!(phase(&mut sc, 0), (l, Action::Pass) if l.is_zero()));
        assert!(matches!(
            phase(&mut sc, 1).1,
            Action::Status { code: 500, .. }
        ));
        assert!(matches!(
            phase(&mut sc, 2).1,
            Action::Status {
                code: 429,
                retry_after: Some(1),
                ..
            }
        ));
        assert!(matches!(phase(&mut sc, 3), (l, Action::Pass) if l == Duration::from_millis(300)));
        assert!(matches!(phase(&mut sc, 4).1, Action::Hold(h) if h == Duration::from_secs(3600)));
        assert!(matches!(phase(&mut sc, 5).1, Action::Pass));
    }

    #[test]
    fn faults_json_defaults() {
        let f: Faults =
            serde_json::from_str(r#"{"mode":"rate429","retry_after_secs":7,"latency":"20ms"}"#)
                .unwrap();
        assert_eq!(f.mode, FaultMode::Rate429);
        assert_eq!(f.retry_after_secs, 7);
        assert_eq!(f.latency, Duration::from_millis(20));
        assert_eq!(f.hold, Duration::from_secs(3600));
        assert!(serde_json::from_str::<Faults>(r#"{"mode":"nope"}"#).is_err());
        assert!(serde_json::from_str::<Faults>(r#"{"latncy":"1s"}"#).is_err());
    }
}
