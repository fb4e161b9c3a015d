//! The console in a real browser: headless Chromium (Debian's `chromium` package) driven over
//! the DevTools protocol. Log in, find a dead-lettered lead whose fields hold markup, see its
//! reason and masked preview with the markup as text, replay it from the page, and see the lead
//! reach the sandbox CRM. Screenshots go to `test-output/console/`.
//!
//! Chromium comes from Debian's archive: when `/usr/bin/chromium` is missing the test installs
//! it with apt-get (as root), and when that is impossible it fails loudly, saying how to
//! install it. It never downloads a browser from anywhere else and never passes silently.
//! `LEADROUTER_CHROMIUM=/path/to/chromium` picks another binary.

mod common;

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{mpsc, Arc, Mutex};
use std::time::{Duration, Instant};

use base64::Engine;
use common::admin::start_console;
use futures::{SinkExt, StreamExt};
use leadrouter::devtools::sandbox_crm::Faults;
use serde_json::{json, Value};
use tokio_tungstenite::tungstenite::Message;

const TOKEN: &str = "browser-admin-token-0123456789abcdef";
const MARKUP_NAME: &str = "<b>bold</b>";
const MARKUP_COMPANY: &str = "<img src=x onerror=alert(1)> <b>bold</b> & co";

// ---------------------------------------------------------------------------------------------
// Chromium: find or install (Debian package), launch, talk CDP

fn loud_failure(why: &str) -> ! {
    panic!(
        "\n\n=====================================================================\n\
         BROWSER TEST CANNOT RUN: {why}\n\
         It needs Debian's `chromium` package. Install it as root with:\n\
         \n    apt-get update && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends chromium\n\
         \n\
         or point LEADROUTER_CHROMIUM at a Chromium binary. This test does not skip.\n\
         =====================================================================\n"
    )
}

fn apt_install() -> Result<(), String> {
    let install = || {
        Command::new("apt-get")
            .args(["install", "-y", "--no-install-recommends", "chromium"])
            .env("DEBIAN_FRONTEND", "noninteractive")
            .stdin(Stdio::null())
            .output()
    };
    let first = install().map_err(|e| format!("cannot run apt-get: {e}"))?;
    if first.status.success() {
        return Ok(());
    }
    eprintln!("browser test: apt-get install chromium failed; running apt-get update and retrying");
    let update = Command::new("apt-get")
        .arg("update")
        .env("DEBIAN_FRONTEND", "noninteractive")
        .stdin(Stdio::null())
        .output()
        .map_err(|e| format!("cannot run apt-get update: {e}"))?;
    let second = install().map_err(|e| format!("cannot run apt-get: {e}"))?;
    if second.status.success() {
        return Ok(());
    }
    Err(format!(
        "apt-get install chromium failed (update: {}; install: {})",
        String::from_utf8_lossy(&update.stderr).trim(),
        String::from_utf8_lossy(&second.stderr).trim()
    ))
}

fn chromium() -> PathBuf {
    if let Some(p) = std::env::var_os("LEADROUTER_CHROMIUM") {
        let p = PathBuf::from(p);
        if !p.exists() {
            loud_failure(&format!(
                "LEADROUTER_CHROMIUM={} does not exist",
                p.display()
            ));
        }
        return p;
    }
    let bin = PathBuf::from("/usr/bin/chromium");
    if bin.exists() {
        return bin;
    }
    eprintln!("browser test: /usr/bin/chromium is missing; installing Debian's chromium package");
    if !is_root() {
        loud_failure(
            "/usr/bin/chromium is missing and this user is not root, so it cannot be installed",
        );
    }
    if let Err(e) = apt_install() {
        loud_failure(&e);
    }
    if !bin.exists() {
        loud_failure("apt-get reported success but /usr/bin/chromium is still missing");
    }
    bin
}

fn is_root() -> bool {
    Command::new("id")
        .arg("-u")
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim() == "0")
        .unwrap_or(false)
}

struct Browser {
    child: Child,
    _profile: tempfile::TempDir,
    stderr_tail: Arc<Mutex<Vec<String>>>,
    ws_url: String,
}

impl Browser {
    fn launch(bin: &Path) -> Browser {
        let profile = tempfile::tempdir().unwrap();
        let mut child = Command::new(bin)
            .args([
                "--headless",
                "--no-sandbox",
                "--disable-gpu",
                "--disable-quic",
                "--no-first-run",
                "--no-default-browser-check",
                "--disable-background-networking",
                "--disable-component-update",
                "--disable-sync",
                "--disable-extensions",
                "--disable-dev-shm-usage",
                "--disable-breakpad",
                "--disable-features=Translate,MediaRouter,OptimizationHints,AutofillServerCommunication",
                "--metrics-recording-only",
                "--password-store=basic",
                "--use-mock-keychain",
                "--hide-scrollbars",
                "--mute-audio",
                "--window-size=1400,1000",
                "--remote-debugging-address=127.0.0.1",
                "--remote-debugging-port=0",
            ])
            .arg(format!("--user-data-dir={}", profile.path().display()))
            .arg("about:blank")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap_or_else(|e| loud_failure(&format!("cannot start {}: {e}", bin.display())));
        let stderr = child.stderr.take().unwrap();
        let tail = Arc::new(Mutex::new(Vec::new()));
        let (tx, rx) = mpsc::channel();
        {
            let tail = tail.clone();
            // Reads stderr to the end (a full pipe would stall the browser), keeping the tail.
            std::thread::spawn(move || {
                for line in BufReader::new(stderr).lines() {
                    let Ok(line) = line else { break };
                    if let Some(url) = line.split("DevTools listening on ").nth(1) {
                        let _ = tx.send(url.trim().to_string());
                    }
                    let mut t = tail.lock().unwrap();
                    t.push(line);
                    if t.len() > 40 {
                        t.remove(0);
                    }
                }
            });
        }
        let ws_url = match rx.recv_timeout(Duration::from_secs(30)) {
            Ok(u) => u,
            Err(_) => {
                let _ = child.kill();
                loud_failure(&format!(
                    "Chromium did not open its DevTools port within 30 s; its stderr:\n{}",
                    tail.lock().unwrap().join("\n")
                ))
            }
        };
        Browser {
            child,
            _profile: profile,
            stderr_tail: tail,
            ws_url,
        }
    }
}

impl Drop for Browser {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

type Ws =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

/// A minimal DevTools protocol client: one page, one command at a time; events are kept.
struct Page {
    ws: Ws,
    next: u64,
    session: String,
    events: Vec<Value>,
}

impl Page {
    async fn open(browser: &Browser) -> Page {
        let (ws, _) = tokio_tungstenite::connect_async(browser.ws_url.as_str())
            .await
            .expect("connect to the DevTools WebSocket");
        let mut p = Page {
            ws,
            next: 0,
            session: String::new(),
            events: Vec::new(),
        };
        let target = p
            .call("Target.createTarget", json!({"url": "about:blank"}))
            .await;
        let attached = p
            .call(
                "Target.attachToTarget",
                json!({"targetId": target["targetId"], "flatten": true}),
            )
            .await;
        p.session = attached["sessionId"].as_str().unwrap().to_string();
        for m in ["Page.enable", "Runtime.enable", "Log.enable"] {
            p.call(m, json!({})).await;
        }
        p.viewport(1000).await;
        p
    }

    async fn call(&mut self, method: &str, params: Value) -> Value {
        self.next += 1;
        let id = self.next;
        let mut msg = json!({"id": id, "method": method, "params": params});
        if !self.session.is_empty() {
            msg["sessionId"] = json!(self.session);
        }
        self.ws
            .send(Message::text(msg.to_string()))
            .await
            .expect("send to DevTools");
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            let next = tokio::time::timeout(left, self.ws.next())
                .await
                .unwrap_or_else(|_| panic!("DevTools: no answer to {method} within 30 s"));
            let Some(Ok(Message::Text(text))) = next else {
                if let Some(Ok(_)) = next {
                    continue;
                }
                panic!("DevTools connection closed during {method}");
            };
            let v: Value = serde_json::from_str(text.as_str()).unwrap();
            if v["id"].as_u64() == Some(id) {
                if let Some(e) = v.get("error") {
                    panic!("DevTools {method}: {e}");
                }
                return v["result"].clone();
            }
            if v.get("method").is_some() {
                self.events.push(v);
            }
        }
    }

    /// Evaluates an expression in the page (promises awaited) and returns its JSON value.
    async fn eval(&mut self, expr: &str) -> Value {
        let r = self
            .call(
                "Runtime.evaluate",
                json!({"expression": expr, "returnByValue": true, "awaitPromise": true}),
            )
            .await;
        if let Some(ex) = r.get("exceptionDetails") {
            panic!("page script `{expr}` threw: {ex}");
        }
        r["result"]["value"].clone()
    }

    /// Waits (a bounded poll of the page) until `cond` is truthy; returns its value.
    async fn wait_for(&mut self, what: &str, cond: &str) -> Value {
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let v = self
                .call(
                    "Runtime.evaluate",
                    json!({"expression": cond, "returnByValue": true}),
                )
                .await;
            let value = v["result"]["value"].clone();
            let truthy = !matches!(value, Value::Null | Value::Bool(false))
                && value != json!(0)
                && value != json!("");
            if truthy && v.get("exceptionDetails").is_none() {
                return value;
            }
            if Instant::now() > deadline {
                let text = self
                    .eval("document.body ? document.body.innerText : ''")
                    .await;
                panic!(
                    "waited 20 s for {what} ({cond}); the page at {} says:\n{}\nevents: {:#?}",
                    self.eval("location.href").await,
                    text.as_str().unwrap_or(""),
                    self.events
                );
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    async fn goto(&mut self, url: &str) {
        self.call("Page.navigate", json!({"url": url})).await;
        self.wait_for(
            "the page to load",
            &format!(
                "location.href.startsWith({}) || location.pathname === '/login'",
                js(url)
            ),
        )
        .await;
        self.wait_for("the document", "document.readyState === 'complete'")
            .await;
    }

    async fn viewport(&mut self, height: u64) {
        self.call(
            "Emulation.setDeviceMetricsOverride",
            json!({"width": 1400, "height": height, "deviceScaleFactor": 1, "mobile": false}),
        )
        .await;
    }

    /// A full-page PNG.
    async fn screenshot(&mut self, path: &Path) {
        let h = self
            .eval("Math.ceil(document.documentElement.scrollHeight)")
            .await
            .as_u64()
            .unwrap_or(1000)
            .clamp(600, 4000);
        self.viewport(h).await;
        let shot = self
            .call("Page.captureScreenshot", json!({"format": "png"}))
            .await;
        self.viewport(1000).await;
        let png = base64::engine::general_purpose::STANDARD
            .decode(shot["data"].as_str().unwrap())
            .unwrap();
        assert!(png.starts_with(b"\x89PNG"), "a PNG");
        std::fs::write(path, png).unwrap();
        eprintln!("browser test: screenshot {}", path.display());
    }

    /// Script errors, dialogs (an `alert` would mean injected markup ran) and console errors
    /// (CSP violations are reported there).
    fn problems(&self) -> Vec<String> {
        self.events
            .iter()
            .filter_map(|e| {
                let m = e["method"].as_str().unwrap_or("");
                let p = &e["params"];
                match m {
                    "Runtime.exceptionThrown" => {
                        Some(format!("exception: {}", p["exceptionDetails"]))
                    }
                    "Page.javascriptDialogOpening" => Some(format!("dialog: {}", p["message"])),
                    "Log.entryAdded" if p["entry"]["level"] == "error" => {
                        Some(format!("console: {}", p["entry"]["text"]))
                    }
                    "Runtime.consoleAPICalled" if p["type"] == "error" => {
                        Some(format!("console.error: {}", p["args"]))
                    }
                    _ => None,
                }
            })
            .collect()
    }
}

/// A JS string literal.
fn js(s: &str) -> String {
    serde_json::to_string(s).unwrap()
}

// ---------------------------------------------------------------------------------------------
// The service

fn output_dir() -> PathBuf {
    let dir = common::manifest_dir().join("test-output").join("console");
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn console_in_chromium_login_see_dead_letter_replay_it() {
    let bin = chromium();
    let started = Instant::now();

    let (s, _schemas) = start_console(TOKEN).await;
    let (app, crm, admin) = (&s.app, &s.crm, &s.admin);

    // Some traffic for the overview, then a lead the failing CRM sends to the DLQ.
    for i in 0..4 {
        let body =
            json!({"email": format!("ok{i}@example.com"), "first_name": "Ada", "company": "Acme"});
        app.accept("demo", &format!("evt-ok-{i}"), body.to_string().as_bytes())
            .await;
    }
    s.wait("four deliveries", |st| st.delivered() == 4).await;
    crm.set_faults(Faults::fail_next(1000, 500));
    let body = json!({
        "email": "markup.person@example.com",
        "first_name": MARKUP_NAME,
        "phone": "+1 650 555 4567",
        "company": MARKUP_COMPANY,
    });
    let key = app
        .accept("demo", "evt-markup-1", body.to_string().as_bytes())
        .await;
    s.wait("the dead letter", |_| s.dead("retries_exhausted") == 1)
        .await;

    let browser = Browser::launch(&bin);
    let mut page = Page::open(&browser).await;
    let out = output_dir();

    // Not logged in: the console sends the browser to the login page.
    page.goto(&format!("{admin}/")).await;
    page.wait_for(
        "the login form",
        "!!document.querySelector('form[action=\"/login\"]')",
    )
    .await;
    assert_eq!(page.eval("location.pathname").await, "/login");
    page.eval(&format!(
        "document.getElementById('token').value = {}; document.getElementById('name').value = 'e2e'; document.getElementById('login').click(); true",
        js(TOKEN)
    ))
    .await;

    // The overview, drawn.
    page.wait_for(
        "the overview",
        "document.getElementById('app') && document.getElementById('app').getAttribute('data-loaded') === 'overview' && document.querySelectorAll('#charts svg.chart').length === 6",
    )
    .await;
    assert_eq!(page.eval("location.pathname").await, "/");
    assert_eq!(
        page.eval("document.getElementById('who').textContent")
            .await,
        "console:e2e"
    );
    assert_eq!(
        page.eval("document.cookie.includes('leadrouter_session')")
            .await,
        false,
        "the session cookie is HttpOnly"
    );
    let tiles = page
        .eval("document.getElementById('tiles').textContent")
        .await;
    let tiles = tiles.as_str().unwrap();
    assert!(
        tiles.contains("End-to-end p95") && tiles.contains("SLO"),
        "{tiles}"
    );
    let paths = page
        .eval("document.querySelectorAll('#charts path.line').length")
        .await;
    assert!(paths.as_u64().unwrap() >= 3, "lines drawn: {paths}");
    let bars = page
        .eval("document.querySelectorAll('#charts rect.bar').length")
        .await;
    assert!(
        bars.as_u64().unwrap() >= 1,
        "the DLQ placement shows as a bar"
    );
    page.screenshot(&out.join("overview.png")).await;

    // The DLQ page: reason, masked preview, markup as text.
    page.goto(&format!("{admin}/dlq?reason=retries_exhausted"))
        .await;
    page.wait_for(
        "the DLQ entry",
        "document.getElementById('app').getAttribute('data-loaded') === 'dlq' && document.querySelectorAll('#dlq-table tr[data-id]').length === 1",
    )
    .await;
    let row = page
        .eval("document.querySelector('#dlq-table tr[data-id]').innerText")
        .await;
    let row = row.as_str().unwrap().to_string();
    assert!(row.contains("retries_exhausted"), "{row}");
    assert!(row.contains("500"), "the last error: {row}");
    let preview = page
        .eval("document.querySelector('#dlq-table td.preview pre').textContent")
        .await;
    let preview = preview.as_str().unwrap().to_string();
    let lines = preview.lines().count();
    assert!((5..=10).contains(&lines), "{preview}");
    assert!(preview.contains("m***@e***.com"), "masked email: {preview}");
    assert!(!preview.contains("markup.person"), "{preview}");
    assert!(preview.contains("+1 *** *** 4567"), "{preview}");
    assert!(
        preview.contains(&format!("company: {MARKUP_COMPANY}")),
        "the markup is shown as text: {preview}"
    );
    assert!(
        preview.contains("first_name: B."),
        "names are initials: {preview}"
    );
    assert_eq!(
        page.eval("document.querySelectorAll('img, #app b, #app script').length")
            .await,
        0,
        "no element was made from lead data"
    );
    page.screenshot(&out.join("dlq.png")).await;

    // Replay it from the page, once the CRM is fixed: select, give a reason, confirm.
    crm.heal();
    page.eval("document.querySelector('#dlq-table input.row-select').click(); true")
        .await;
    assert_eq!(
        page.eval("document.getElementById('replay-selected').textContent")
            .await,
        "Replay selected (1)"
    );
    // Without a reason, nothing happens but a request for one.
    page.eval("document.getElementById('replay-selected').click(); true")
        .await;
    page.wait_for(
        "the reason is required",
        "!document.getElementById('action-msg').hidden && !document.getElementById('confirm')",
    )
    .await;
    page.eval("document.getElementById('replay-reason').value = 'CRM back (browser test)'; document.getElementById('replay-selected').click(); true")
        .await;
    let title = page
        .wait_for(
            "the confirmation",
            "document.getElementById('confirm') && document.getElementById('confirm').open && document.querySelector('#confirm h2').textContent",
        )
        .await;
    assert_eq!(title, "Replay 1 entry?");
    page.eval("document.getElementById('confirm-yes').click(); true")
        .await;
    let summary = page
        .wait_for(
            "the replay results",
            "document.getElementById('replay-summary') && document.getElementById('replay-summary').textContent",
        )
        .await;
    assert_eq!(summary, "Replayed 1, skipped 0, failed 0.");
    let result = page
        .eval("document.querySelector('#results-table tbody tr').innerText")
        .await;
    assert!(result.as_str().unwrap().contains("replayed"), "{result}");

    // The lead reaches the sandbox CRM.
    s.wait("the replay delivered", |st| st.delivered() == 5)
        .await;
    let rec = crm.record(&key).expect("the CRM got the lead");
    assert_eq!(rec.created, 1);

    // The entry is marked with who, when and why.
    page.wait_for(
        "the replay mark",
        "document.querySelector('#dlq-table ul.marks li') && document.querySelector('#dlq-table ul.marks li').textContent",
    )
    .await;
    let mark = page
        .eval("document.querySelector('#dlq-table ul.marks li').textContent")
        .await;
    let mark = mark.as_str().unwrap();
    assert!(
        mark.contains("by console:e2e: CRM back (browser test)"),
        "{mark}"
    );
    page.screenshot(&out.join("dlq-replayed.png")).await;

    // Lead lookup by its key: delivered, with its timeline.
    page.goto(&format!("{admin}/leads?q={key}")).await;
    let status = page
        .wait_for(
            "the lookup",
            "document.querySelector('#lookup-result .status') && document.querySelector('#lookup-result .status').textContent",
        )
        .await;
    assert_eq!(status, "delivered");
    let timeline = page
        .eval("document.querySelector('#lookup-result ol.timeline').innerText")
        .await;
    let timeline = timeline.as_str().unwrap();
    assert!(
        timeline.contains("replayed by console:e2e") && timeline.contains("confirmed by sink crm"),
        "{timeline}"
    );
    page.screenshot(&out.join("lookup.png")).await;

    let problems = page.problems();
    assert!(
        problems.is_empty(),
        "the browser reported problems: {problems:#?}\nChromium stderr tail:\n{}",
        browser.stderr_tail.lock().unwrap().join("\n")
    );
    drop(page);
    drop(browser);
    s.shutdown().await;
    eprintln!(
        "browser test: done in {:.1} s",
        started.elapsed().as_secs_f64()
    );
}
