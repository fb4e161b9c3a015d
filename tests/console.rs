//! The operator console's server side: every page and API call behind the admin token or a
//! login session, CSRF protection for state changes, security headers, and each API call the
//! console makes (DLQ list / show / replay, stats, latency, overview, lead lookup).

mod common;

use std::ops::Deref;
use std::time::{Duration, Instant};

use common::admin::{admin_config, admin_env, console_sender, schemas, start_console, AdminApp};
use common::{App, NatsServer};
use leadrouter::devtools::sandbox_crm::Faults;
use reqwest::header::{HeaderMap, CONTENT_TYPE, COOKIE, LOCATION, SET_COOKIE};
use reqwest::Method;
use serde_json::{json, Value};

const TOKEN: &str = "console-admin-token-0123456789abcdef";
const GET: Method = Method::GET;
const POST: Method = Method::POST;
const CSP: &str = "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; connect-src 'self'; frame-ancestors 'none'; base-uri 'none'; form-action 'self'";

/// The shared admin set-up, with the schema directory it reads kept alive.
struct Setup {
    s: AdminApp,
    _schemas: tempfile::TempDir,
}

impl Deref for Setup {
    type Target = AdminApp;

    fn deref(&self) -> &AdminApp {
        &self.s
    }
}

impl Setup {
    async fn shutdown(self) {
        self.s.shutdown().await;
    }
}

async fn setup() -> Setup {
    let (s, dir) = start_console(TOKEN).await;
    Setup { s, _schemas: dir }
}

fn lead(email: &str) -> Vec<u8> {
    serde_json::to_vec(&json!({
        "email": email,
        "first_name": "Zelda",
        "phone": "+1 650 555 4567",
        "company": "Hyrule <b>Ltd</b>",
    }))
    .unwrap()
}

impl Setup {
    /// Logs in through the login form; returns the cookie header value and the CSRF token.
    async fn login(&self, name: &str) -> (String, String) {
        let r = self
            .http
            .post(self.url("/login"))
            .header("origin", &self.admin)
            .form(&[("token", TOKEN), ("name", name)])
            .send()
            .await
            .unwrap();
        assert_eq!(r.status().as_u16(), 303);
        assert_eq!(r.headers()[LOCATION], "/");
        let set = r.headers()[SET_COOKIE].to_str().unwrap().to_string();
        let cookie = set.split(';').next().unwrap().to_string();
        let (st, who, _) = self.session(GET, "/api/session", &cookie, &[], None).await;
        assert_eq!(st, 200, "{who}");
        (cookie, who["csrf"].as_str().unwrap().to_string())
    }

    /// `method path` with the session `cookie` and `headers` (and `body` as JSON).
    async fn session(
        &self,
        method: Method,
        path: &str,
        cookie: &str,
        headers: &[(&str, &str)],
        body: Option<&Value>,
    ) -> (u16, Value, HeaderMap) {
        let mut req = self
            .http
            .request(method, self.url(path))
            .header(COOKIE, cookie);
        for (k, v) in headers {
            req = req.header(*k, *v);
        }
        if let Some(b) = body {
            req = req.json(b);
        }
        common::send(req).await
    }

    /// Posts lead(s) that the failing CRM sends to the DLQ; returns their keys.
    async fn dead_letter(&self, events: &[(&str, &str)]) -> Vec<String> {
        self.crm.set_faults(Faults::fail_next(1000, 500));
        let before = self.dead("retries_exhausted");
        let mut keys = Vec::new();
        for (event, email) in events {
            keys.push(self.app.accept("demo", event, &lead(email)).await);
        }
        let want = before + events.len() as u64;
        self.wait("dead-lettered", |_| self.dead("retries_exhausted") == want)
            .await;
        keys
    }

    /// Polls a lookup until it answers 200 (the index entry is written without waiting).
    async fn lookup(&self, what: &str, pred: impl Fn(&Value) -> bool) -> Value {
        let deadline = Instant::now() + Duration::from_secs(15);
        loop {
            let (st, b, _) = self.get(&format!("/api/leads/{what}")).await;
            if st == 200 && pred(&b) {
                return b;
            }
            assert!(
                Instant::now() < deadline,
                "lookup {what}: still {st} {b} after 15 s"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

fn assert_secure_headers(h: &HeaderMap, what: &str) {
    assert_eq!(h["content-security-policy"], CSP, "{what}");
    assert_eq!(h["x-content-type-options"], "nosniff", "{what}");
    assert_eq!(h["referrer-policy"], "no-referrer", "{what}");
    assert_eq!(h["cache-control"], "no-store", "{what}");
    assert_eq!(h["x-frame-options"], "DENY", "{what}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_page_and_api_call_needs_the_token() {
    let s = setup().await;
    let gets = [
        "/api/session",
        "/api/stats",
        "/api/latency?window=15m&percentile=95",
        "/api/overview",
        "/api/dlq",
        "/api/dlq?reason=retries_exhausted&sender=demo&since=1h",
        "/api/dlq/1",
        "/api/leads/lr_0123456789abcdef0123456789abcdef",
        "/api/leads/evt-1",
        "/api/leads/ada%40example.com",
        "/api/nope",
    ];
    for path in gets {
        for auth in [None, Some("wrong"), Some("")] {
            let mut req = s.http.get(s.url(path));
            if let Some(t) = auth {
                req = req.header("authorization", format!("Bearer {t}"));
            }
            let (st, b, h) = common::read(req.send().await.unwrap()).await;
            assert_eq!(st, 401, "GET {path} with {auth:?}: {b}");
            assert_eq!(b["error"], "unauthorized");
            assert_secure_headers(&h, path);
        }
        // A cookie that is no session is no login either.
        let r = s
            .http
            .get(s.url(path))
            .header(COOKIE, "leadrouter_session=0123456789abcdef")
            .send()
            .await
            .unwrap();
        assert_eq!(
            r.status().as_u16(),
            401,
            "GET {path} with a made-up session"
        );
    }
    for path in ["/api/dlq/1/replay", "/api/replay", "/logout"] {
        let r = s
            .http
            .post(s.url(path))
            .json(&json!({"reason": "x", "filter": {"reason": "retries_exhausted"}}))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status().as_u16(), 401, "POST {path}");
    }
    // Pages send the browser to the login page; the login page and the assets need nothing.
    for page in ["/", "/dlq", "/leads?q=evt-1"] {
        let r = s.http.get(s.url(page)).send().await.unwrap();
        assert_eq!(r.status().as_u16(), 303, "{page}");
        assert_eq!(r.headers()[LOCATION], "/login");
        assert_secure_headers(r.headers(), page);
    }
    let r = s.http.get(s.url("/login")).send().await.unwrap();
    assert_eq!(r.status().as_u16(), 200);
    assert_secure_headers(r.headers(), "/login");
    let html = r.text().await.unwrap();
    assert!(html.contains("action=\"/login\""), "{html}");
    assert!(!html.contains("<script"), "the login page runs no script");
    for (asset, ct) in [
        ("/assets/console.js", "text/javascript; charset=utf-8"),
        ("/assets/console.css", "text/css; charset=utf-8"),
        ("/assets/icon.svg", "image/svg+xml"),
    ] {
        let r = s.http.get(s.url(asset)).send().await.unwrap();
        assert_eq!(r.status().as_u16(), 200, "{asset}");
        assert_eq!(r.headers()[CONTENT_TYPE], ct);
        assert_secure_headers(r.headers(), asset);
    }

    // With the token: the pages and the API answer, with the same headers.
    let (st, html, h) = s.get("/dlq").await;
    assert_eq!(st, 200);
    assert_secure_headers(&h, "/dlq with token");
    let html = html.as_str().expect("the page's HTML");
    assert!(html.contains("<script src=\"/assets/console.js\" defer></script>"));
    let (st, b, h) = s.get("/api/session").await;
    assert_eq!((st, b["auth"].as_str()), (200, Some("token")), "{b}");
    assert_eq!(h[CONTENT_TYPE], "application/json");
    assert_secure_headers(&h, "/api/session");
    let (st, b, _) = s.get("/api/nope").await;
    assert_eq!((st, b["error"].as_str()), (404, Some("not_found")));
    let (st, _, _) = common::send(s.http.delete(s.url("/api/dlq")).bearer_auth(TOKEN)).await;
    assert_eq!(st, 405);
    s.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_admin_token_means_no_admin_listener() {
    let nats = NatsServer::start();
    let dir = schemas();
    let cfg = || admin_config(dir.path()).sender(console_sender());
    let mut e = admin_env(TOKEN);
    e.remove("LEADROUTER_ADMIN_TOKEN");
    let app = App::start_with(&nats.url(), cfg(), e.clone()).await;
    assert!(
        app.service.admin_addr().is_none(),
        "the admin listener must not run without a token"
    );
    app.service.shutdown().await;
    // An empty token is no token.
    e.insert("LEADROUTER_ADMIN_TOKEN".into(), String::new());
    let app = App::start_with(&nats.url(), cfg(), e).await;
    assert!(app.service.admin_addr().is_none());
    app.service.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn login_sessions_are_httponly_strict_and_csrf_safe() {
    let s = setup().await;
    let login = |headers: &[(&str, &str)]| {
        let mut req = s.http.post(s.url("/login"));
        for (k, v) in headers {
            req = req.header(*k, *v);
        }
        req
    };
    // A wrong token: the login page again, with a message, and no cookie.
    let r = login(&[])
        .form(&[("token", "not-it")])
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 401);
    assert!(r.headers().get(SET_COOKIE).is_none());
    assert!(r.text().await.unwrap().contains("not the admin token"));
    // JSON login works too; a foreign page cannot log this browser in.
    let r = login(&[])
        .json(&json!({"token": TOKEN}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 200);
    let r = login(&[("origin", "http://evil.example")])
        .form(&[("token", TOKEN)])
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 403);
    assert!(r.headers().get(SET_COOKIE).is_none());

    // The cookie: HttpOnly, SameSite=Strict, whole site, not Secure on plain loopback HTTP
    // (Secure when a TLS proxy says https).
    let r = login(&[])
        .form(&[("token", TOKEN), ("name", "alice")])
        .send()
        .await
        .unwrap();
    let set = r.headers()[SET_COOKIE].to_str().unwrap().to_string();
    assert!(set.starts_with("leadrouter_session="), "{set}");
    for attr in ["HttpOnly", "SameSite=Strict", "Path=/", "Max-Age=43200"] {
        assert!(set.contains(attr), "{attr} in {set}");
    }
    assert!(!set.contains("Secure"), "{set}");
    let r = login(&[("x-forwarded-proto", "https")])
        .form(&[("token", TOKEN)])
        .send()
        .await
        .unwrap();
    assert!(r.headers()[SET_COOKIE]
        .to_str()
        .unwrap()
        .contains("; Secure"));

    let (cookie, csrf) = s.login("alice").await;
    assert_eq!(csrf.len(), 64);
    let (st, who, _) = s.session(GET, "/api/session", &cookie, &[], None).await;
    assert_eq!((st, who["user"].as_str()), (200, Some("console:alice")));
    // Pages with the session; the login page sends a logged-in browser on.
    for (page, want) in [("/", 200), ("/dlq", 200), ("/leads", 200), ("/login", 303)] {
        let (st, _, _) = s.session(GET, page, &cookie, &[], None).await;
        assert_eq!(st, want, "{page}");
    }

    // State changes with the cookie need the CSRF token and a same-origin request.
    let body = json!({"filter": {"reason": "retries_exhausted"}, "reason": "x"});
    let wrong = "0".repeat(64);
    for (headers, why) in [
        (vec![], "no CSRF token"),
        (vec![("x-csrf-token", wrong.as_str())], "wrong CSRF token"),
        (
            vec![
                ("x-csrf-token", csrf.as_str()),
                ("origin", "http://evil.example"),
            ],
            "origin: http://evil.example",
        ),
        (
            vec![
                ("x-csrf-token", csrf.as_str()),
                ("sec-fetch-site", "cross-site"),
            ],
            "sec-fetch-site: cross-site",
        ),
    ] {
        let (st, _, _) = s
            .session(POST, "/api/replay", &cookie, &headers, Some(&body))
            .await;
        assert_eq!(st, 403, "{why}");
    }
    let same_origin = [
        ("x-csrf-token", csrf.as_str()),
        ("origin", s.admin.as_str()),
        ("sec-fetch-site", "same-origin"),
    ];
    let (st, sum, _) = s
        .session(POST, "/api/replay", &cookie, &same_origin, Some(&body))
        .await;
    assert_eq!((st, sum["replayed"].as_u64()), (200, Some(0)), "{sum}");
    // Reading needs no CSRF token.
    let (st, _, _) = s.session(GET, "/api/dlq", &cookie, &[], None).await;
    assert_eq!(st, 200);

    // Logging out ends the session (CSRF-checked like any change).
    let (st, _, _) = s.session(POST, "/logout", &cookie, &[], None).await;
    assert_eq!(st, 403);
    let csrf_only = [("x-csrf-token", csrf.as_str())];
    let (st, _, h) = s.session(POST, "/logout", &cookie, &csrf_only, None).await;
    assert_eq!(st, 200);
    assert!(h[SET_COOKIE].to_str().unwrap().contains("Max-Age=0"));
    for (path, want) in [("/api/dlq", 401), ("/", 303)] {
        let (st, _, _) = s.session(GET, path, &cookie, &[], None).await;
        assert_eq!(st, want, "{path} after logout");
    }
    s.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dlq_calls_list_show_and_replay_with_who_when_why() {
    let s = setup().await;
    let keys = s
        .dead_letter(&[
            ("evt-c-1", "one@example.com"),
            ("evt-c-2", "two@example.com"),
            ("evt-c-3", "three@example.com"),
        ])
        .await;

    // List, with each filter.
    let (st, list, _) = s
        .get("/api/dlq?reason=retries_exhausted&sender=demo&since=1h")
        .await;
    assert_eq!(st, 200, "{list}");
    let entries = list["entries"].as_array().unwrap();
    assert_eq!(entries.len(), 3);
    // Entries of different leads die in whatever order their handlers finish: go by key.
    let by_key = |k: &str| entries.iter().find(|e| e["key"] == k).unwrap().clone();
    let e = &by_key(&keys[0]);
    assert_eq!(e["reason"], "retries_exhausted");
    assert!(e["last_error"].as_str().unwrap().contains("500"), "{e}");
    assert_eq!(e["attempts"], 2);
    let preview = e["preview"].as_array().unwrap();
    assert!((5..=10).contains(&preview.len()), "{e}");
    let p = e["preview"].to_string();
    assert!(
        !p.contains("one@example.com") && !p.contains("Zelda"),
        "{p}"
    );
    assert!(p.contains("o***@e***.com"), "{p}");
    assert!(
        p.contains("company: Hyrule <b>Ltd</b>"),
        "markup stays text: {p}"
    );
    for q in [
        "reason=schema_mismatch",
        "sender=other",
        "since=2099-01-01T00:00:00Z",
    ] {
        let (st, l, _) = s.get(&format!("/api/dlq?{q}")).await;
        assert_eq!(st, 200);
        assert_eq!(l["entries"].as_array().unwrap().len(), 0, "{q}");
    }
    let (st, b, _) = s.get("/api/dlq?since=yesterday-ish").await;
    assert_eq!((st, b["error"].as_str()), (400, Some("bad_since")));
    let ids: Vec<u64> = keys
        .iter()
        .map(|k| by_key(k)["id"].as_u64().unwrap())
        .collect();

    // Show one; an unknown one is 404.
    let (st, shown, _) = s.get(&format!("/api/dlq/{}", ids[0])).await;
    assert_eq!((st, shown["key"].as_str()), (200, Some(keys[0].as_str())));
    let (st, _, _) = s.get("/api/dlq/999999").await;
    assert_eq!(st, 404);

    // Errors: reason, filter, both, body type.
    let (st, b) = s
        .post(&format!("/api/dlq/{}/replay", ids[0]), json!({}))
        .await;
    assert_eq!((st, b["error"].as_str()), (400, Some("reason_required")));
    let (st, b) = s.post("/api/replay", json!({"reason": "x"})).await;
    assert_eq!((st, b["error"].as_str()), (400, Some("filter_required")));
    let (st, b) = s
        .post(
            "/api/replay",
            json!({"reason": "x", "ids": [1], "filter": {"reason": "r"}}),
        )
        .await;
    assert_eq!((st, b["error"].as_str()), (400, Some("invalid_body")));
    let r = s
        .http
        .post(s.url("/api/replay"))
        .bearer_auth(TOKEN)
        .header(CONTENT_TYPE, "application/x-www-form-urlencoded")
        .body("reason=x")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 415);

    s.crm.heal();
    // One by id, through a console session: recorded as the session's user.
    let (cookie, csrf) = s.login("alice").await;
    let r = s
        .http
        .post(s.url(&format!("/api/dlq/{}/replay", ids[0])))
        .header(COOKIE, &cookie)
        .header("x-csrf-token", &csrf)
        .header("x-leadrouter-actor", "mallory")
        .json(&json!({"reason": "CRM fixed"}))
        .send()
        .await
        .unwrap();
    let (st, r1, _) = common::read(r).await;
    assert_eq!(
        (st, r1["outcome"].as_str()),
        (200, Some("replayed")),
        "{r1}"
    );
    // Selected ids (one unknown: a per-entry failure, not a failed request).
    let (st, sum) = s
        .post(
            "/api/replay",
            json!({"ids": [ids[1], 999999], "reason": "selected in the console"}),
        )
        .await;
    assert_eq!(st, 200, "{sum}");
    assert_eq!(
        (sum["replayed"].as_u64(), sum["failed"].as_u64()),
        (Some(1), Some(1)),
        "{sum}"
    );
    assert_eq!(sum["results"][1]["outcome"], "failed");
    // Everything matching a filter: the two replayed before are skipped.
    let (st, sum) = s
        .post(
            "/api/replay",
            json!({"filter": {"reason": "retries_exhausted", "since": "1h"}, "reason": "sweep"}),
        )
        .await;
    assert_eq!(st, 200, "{sum}");
    assert_eq!(
        (sum["replayed"].as_u64(), sum["skipped"].as_u64()),
        (Some(1), Some(2)),
        "{sum}"
    );
    s.wait("three replays delivered", |st| st.delivered() == 3)
        .await;
    for k in &keys {
        assert_eq!(s.crm.record(k).unwrap().created, 1, "{k}");
    }

    // Who, when, why.
    let (_, shown, _) = s.get(&format!("/api/dlq/{}", ids[0])).await;
    let mark = &shown["replays"][0];
    assert_eq!(mark["by"], "console:alice", "{shown}");
    assert_eq!(mark["reason"], "CRM fixed");
    assert!(mark["at"].as_str().unwrap().ends_with('Z'));
    let (_, shown, _) = s.get(&format!("/api/dlq/{}", ids[1])).await;
    assert_eq!(shown["replays"][0]["by"], "api");
    let (_, hidden, _) = s.get("/api/dlq?hide_replayed=true").await;
    assert_eq!(hidden["entries"].as_array().unwrap().len(), 0);
    s.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stats_latency_and_overview_figures() {
    let s = setup().await;
    for i in 0..3 {
        let email = format!("ok{i}@example.com");
        s.app
            .accept("demo", &format!("evt-ok-{i}"), &lead(&email))
            .await;
    }
    s.wait("delivered", |st| st.delivered() == 3).await;
    s.dead_letter(&[("evt-dead-1", "dead@example.com")]).await;

    let (st, stats, _) = s.get("/api/stats?window=15m").await;
    assert_eq!(st, 200, "{stats}");
    assert_eq!(stats["dead_by_reason"]["retries_exhausted"], 1);
    assert_eq!(stats["dlq_by_reason"]["retries_exhausted"], 1);
    let (st, lat, _) = s.get("/api/latency?window=15m&percentile=95").await;
    assert_eq!(st, 200, "{lat}");
    assert_eq!(lat["samples"], 3);
    assert_eq!(lat["slo_ms"], 2000.0);
    assert_eq!(lat["within_slo"], true);
    for (q, code) in [
        ("/api/latency?window=banana", "bad_window"),
        ("/api/latency?percentile=101", "bad_percentile"),
        ("/api/stats?window=48h", "bad_window"),
        ("/api/overview?window=0s", "bad_window"),
    ] {
        let (st, b, _) = s.get(q).await;
        assert_eq!((st, b["error"].as_str()), (400, Some(code)), "{q}");
    }

    let (st, o, _) = s.get("/api/overview?window=15m").await;
    assert_eq!(st, 200, "{o}");
    assert_eq!(o["window_s"], 900);
    assert_eq!(o["slo_ms"], 2000.0);
    let t = o["series"]["t"].as_array().unwrap();
    assert_eq!(t.len(), 15, "one point a minute: {o}");
    for name in [
        "intake_per_s",
        "delivered_per_s",
        "duplicate_rate",
        "success_rate",
        "e2e_p95_ms",
        "queue_pending",
        "ack_pending",
    ] {
        assert_eq!(
            o["series"][name].as_array().unwrap().len(),
            t.len(),
            "{name}"
        );
    }
    // The newest point holds what just happened.
    let last = |name: &str| {
        o["series"][name]
            .as_array()
            .unwrap()
            .last()
            .unwrap()
            .clone()
    };
    assert!(last("e2e_p95_ms").as_f64().unwrap() > 0.0, "{o}");
    assert!(last("intake_per_s").as_f64().unwrap() > 0.0, "{o}");
    assert!(last("queue_pending").is_u64(), "{o}");
    assert_eq!(o["now"]["accepted"], 4);
    assert_eq!(o["now"]["delivered"], 3);
    assert_eq!(o["now"]["within_slo"], true);
    assert!(o["now"]["queue"]["max_ack_pending"].as_u64().unwrap() > 0);
    let crm = o["sinks"]
        .as_array()
        .unwrap()
        .iter()
        .find(|x| x["name"] == "crm")
        .expect("the crm sink has a success rate");
    assert_eq!(crm["series"].as_array().unwrap().len(), t.len());
    let rate = crm["success_rate"].as_f64().expect("crm saw requests");
    assert!((0.0..=1.0).contains(&rate));
    let dlq = &o["dlq_by_hour"];
    assert_eq!(dlq["hours"].as_array().unwrap().len(), 24);
    let per_hour = dlq["reasons"]["retries_exhausted"].as_array().unwrap();
    assert_eq!(per_hour.iter().map(|v| v.as_u64().unwrap()).sum::<u64>(), 1);
    assert_eq!(per_hour.last().unwrap(), 1, "placed in the current hour");
    s.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lead_lookup_by_key_event_id_and_email() {
    let s = setup().await;
    let email = "Grace.Lookup@Example.org";
    let delivered_key = s.app.accept("demo", "evt-look-1", &lead(email)).await;
    s.wait("delivered", |_| s.delivered() == 1).await;
    let dead_key = s
        .dead_letter(&[("evt-look-2", "grace.lookup@example.org")])
        .await
        .remove(0);

    // By key: delivered, with the sink, its time and a timeline.
    let v = s
        .lookup(&delivered_key, |v| v["leads"][0]["status"] == "delivered")
        .await;
    let l = &v["leads"][0];
    assert_eq!(v["lookup"]["by"], "key");
    assert_eq!(l["key"], delivered_key.as_str());
    assert_eq!(l["sender"], "demo");
    assert!(l["received_at"].is_string(), "{l}");
    assert_eq!(l["sinks"][0]["name"], "crm");
    let whats: Vec<&str> = l["timeline"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["what"].as_str().unwrap())
        .collect();
    assert_eq!(whats, ["received", "first_attempt", "delivered"], "{l}");

    // By event id: the dead one, why, and where in the DLQ.
    let v = s.lookup("evt-look-2", |_| true).await;
    assert_eq!(v["lookup"]["by"], "event_id");
    let l = &v["leads"][0];
    assert_eq!(l["key"], dead_key.as_str());
    assert_eq!(l["status"], "dead_lettered", "{l}");
    assert_eq!(l["dlq"][0]["reason"], "retries_exhausted");
    assert!(l["last_error"].as_str().unwrap().contains("500"), "{l}");
    let dlq_id = l["dlq"][0]["id"].as_u64().unwrap();

    // By email, typed differently: both leads; the answer never carries the email.
    let v = s
        .lookup("GRACE.lookup%40example.ORG", |v| {
            v["leads"].as_array().unwrap().len() == 2
        })
        .await;
    assert_eq!(v["lookup"]["by"], "email");
    let text = v.to_string().to_lowercase();
    assert!(!text.contains("grace.lookup"), "{text}");
    let found: Vec<&str> = v["leads"]
        .as_array()
        .unwrap()
        .iter()
        .map(|l| l["key"].as_str().unwrap())
        .collect();
    assert!(found.contains(&delivered_key.as_str()) && found.contains(&dead_key.as_str()));
    // `by` says what the text is.
    let (st, _, _) = s.get("/api/leads/lr_nope?by=event_id").await;
    assert_eq!(st, 404);
    let (st, b, _) = s.get("/api/leads/x?by=phone").await;
    assert_eq!((st, b["error"].as_str()), (400, Some("invalid_lookup")));
    let (st, b, _) = s.get("/api/leads/evt-never-seen").await;
    assert_eq!((st, b["error"].as_str()), (404, Some("not_found")));
    assert!(
        b["message"].as_str().unwrap().contains("not found yet"),
        "{b}"
    );

    // Replayed after the fix: delivered, and the timeline says who replayed it and why.
    s.crm.heal();
    let (st, r) = s.replay(dlq_id, "CRM healed").await;
    assert_eq!((st, r["outcome"].as_str()), (200, Some("replayed")), "{r}");
    s.wait("replay delivered", |_| s.delivered() == 2).await;
    let v = s
        .lookup(&dead_key, |v| v["leads"][0]["status"] == "delivered")
        .await;
    let tl = v["leads"][0]["timeline"].as_array().unwrap();
    let whats: Vec<&str> = tl.iter().map(|e| e["what"].as_str().unwrap()).collect();
    for want in [
        "received",
        "first_attempt",
        "dead_lettered",
        "replayed",
        "delivered",
    ] {
        assert!(whats.contains(&want), "{want} in {whats:?}");
    }
    let replayed = tl.iter().find(|e| e["what"] == "replayed").unwrap();
    assert!(replayed["detail"].as_str().unwrap().contains("CRM healed"));
    assert_eq!(s.crm.record(&dead_key).unwrap().created, 1);
    s.shutdown().await;
}
