//! Headless Chromium driven over the Chrome DevTools Protocol, for tests that use a page as a
//! person would: load it, read it, click it, take a screenshot.
//!
//! Chromium is Debian's `chromium` (`scripts/setup.sh` installs it), started with the flags of
//! `TESTING.md`, a fresh profile and `--remote-debugging-port=0`; the test connects to its one
//! page over a WebSocket. A click is a real mouse press and release at the element's centre
//! (`Input.dispatchMouseEvent`), not a script's `click()`. The browser (its whole process group)
//! is killed when the [`Browser`] is dropped.

use std::collections::VecDeque;
use std::path::Path;
use std::time::{Duration, Instant};

use base64::Engine;
use futures::{SinkExt, StreamExt};
use serde_json::{Value, json};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

/// How long one protocol call, a page load or a wait may take.
const PATIENCE: Duration = Duration::from_secs(30);

/// A headless Chromium with one page.
#[derive(Debug)]
pub struct Browser {
    child: tokio::process::Child,
    socket: WebSocketStream<MaybeTlsStream<TcpStream>>,
    next_id: u64,
    /// Protocol events received while waiting for answers, oldest first.
    events: VecDeque<Value>,
    /// The viewport, in CSS pixels (= screenshot pixels).
    pub width: u32,
    /// The viewport's height.
    pub height: u32,
    _profile: tempfile::TempDir,
}

impl Browser {
    /// Starts Chromium (`RUNWAY_TEST_CHROMIUM`, else `chromium` on `PATH`) with a `width` ×
    /// `height` viewport; panics with a sentence if it cannot.
    pub async fn launch(width: u32, height: u32) -> Self {
        let program = std::env::var("RUNWAY_TEST_CHROMIUM").unwrap_or_else(|_| "chromium".into());
        let profile = tempfile::tempdir().expect("a profile folder");
        let mut command = tokio::process::Command::new(&program);
        command
            .args([
                "--headless",
                "--no-sandbox",
                "--disable-gpu",
                "--no-first-run",
                "--disable-background-networking",
                "--disable-component-update",
                "--disable-sync",
                "--hide-scrollbars",
                "--remote-debugging-address=127.0.0.1",
                "--remote-debugging-port=0",
            ])
            .arg(format!("--user-data-dir={}", profile.path().display()))
            .arg(format!("--window-size={width},{height}"))
            .arg("about:blank")
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .process_group(0)
            .kill_on_drop(true);
        let child = command.spawn().unwrap_or_else(|e| {
            panic!(
                "cannot start {program} ({e}): install Debian's chromium (scripts/setup.sh does) \
                 or point RUNWAY_TEST_CHROMIUM at a Chromium"
            )
        });
        // Chromium writes its port (and the browser's path) here once it listens.
        let port_file = profile.path().join("DevToolsActivePort");
        let started = Instant::now();
        let port = loop {
            if let Some(port) = std::fs::read_to_string(&port_file).ok().and_then(|text| {
                text.lines()
                    .next()
                    .and_then(|l| l.trim().parse::<u16>().ok())
            }) {
                break port;
            }
            assert!(
                started.elapsed() < PATIENCE,
                "{program} did not open its DevTools port within {PATIENCE:?}"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        };
        let targets: Value = reqwest::get(format!("http://127.0.0.1:{port}/json/list"))
            .await
            .expect("the DevTools target list")
            .json()
            .await
            .expect("targets as JSON");
        let page = targets
            .as_array()
            .and_then(|t| t.iter().find(|t| t["type"] == "page"))
            .and_then(|t| t["webSocketDebuggerUrl"].as_str())
            .unwrap_or_else(|| panic!("Chromium has no page: {targets}"))
            .to_owned();
        let (socket, _) = tokio_tungstenite::connect_async(page.as_str())
            .await
            .expect("connect to the page's DevTools socket");
        let mut browser = Self {
            child,
            socket,
            next_id: 0,
            events: VecDeque::new(),
            width,
            height,
            _profile: profile,
        };
        for domain in ["Page.enable", "Runtime.enable", "Log.enable"] {
            browser.call(domain, json!({})).await;
        }
        browser
            .call(
                "Emulation.setDeviceMetricsOverride",
                json!({"width": width, "height": height, "deviceScaleFactor": 1, "mobile": false}),
            )
            .await;
        browser
    }

    /// Sends one protocol command and returns its result; panics on a protocol error.
    pub async fn call(&mut self, method: &str, params: Value) -> Value {
        self.next_id += 1;
        let id = self.next_id;
        let message = json!({"id": id, "method": method, "params": params}).to_string();
        self.socket
            .send(Message::text(message))
            .await
            .unwrap_or_else(|e| panic!("sending {method}: {e}"));
        let deadline = Instant::now() + PATIENCE;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            let frame = tokio::time::timeout(left, self.socket.next())
                .await
                .unwrap_or_else(|_| panic!("{method} got no answer within {PATIENCE:?}"))
                .unwrap_or_else(|| panic!("Chromium closed the connection during {method}"))
                .unwrap_or_else(|e| panic!("reading the answer to {method}: {e}"));
            let Message::Text(text) = frame else {
                continue;
            };
            let value: Value = serde_json::from_str(text.as_str()).expect("protocol JSON");
            if value["id"] == id {
                if let Some(error) = value.get("error") {
                    panic!("{method} failed: {error}");
                }
                return value["result"].clone();
            }
            if value.get("method").is_some() {
                self.events.push_back(value);
            }
        }
    }

    /// Evaluates `expression` in the page (awaiting a promise) and returns its value.
    pub async fn eval(&mut self, expression: &str) -> Value {
        let result = self
            .call(
                "Runtime.evaluate",
                json!({"expression": expression, "returnByValue": true, "awaitPromise": true}),
            )
            .await;
        if let Some(exception) = result.get("exceptionDetails") {
            panic!("{expression} threw: {exception}");
        }
        result["result"]["value"].clone()
    }

    /// Loads `url` and waits until the page has loaded.
    pub async fn goto(&mut self, url: &str) {
        self.mark_page().await;
        let result = self.call("Page.navigate", json!({"url": url})).await;
        if let Some(error) = result.get("errorText") {
            panic!("loading {url} failed: {error}");
        }
        self.wait_for_new_page().await;
    }

    /// Marks the current document, so that [`wait_for_new_page`](Self::wait_for_new_page)
    /// can tell when another one has replaced it.
    async fn mark_page(&mut self) {
        self.eval("window.__runwayOldPage = true").await;
    }

    /// Waits until a new document (without the mark) has loaded completely.
    pub async fn wait_for_new_page(&mut self) {
        self.wait_until(
            "a new page to load",
            "window.__runwayOldPage === undefined && document.readyState === 'complete'",
        )
        .await;
    }

    /// Waits until the JavaScript `condition` holds in the page (checked every 100 ms).
    pub async fn wait_until(&mut self, what: &str, condition: &str) {
        let started = Instant::now();
        loop {
            let result = self
                .call(
                    "Runtime.evaluate",
                    json!({"expression": format!("Boolean({condition})"), "returnByValue": true}),
                )
                .await;
            // A page being replaced can fail an evaluation: that is "not yet".
            if result["result"]["value"] == true {
                return;
            }
            assert!(
                started.elapsed() < PATIENCE,
                "waited {PATIENCE:?} for {what} ({condition})"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Clicks the element `selector` names as a mouse would (scrolled into view, pressed and
    /// released at its centre), and, if `navigates`, waits for the page it leads to.
    pub async fn click(&mut self, selector: &str, navigates: bool) {
        let selector_json = serde_json::to_string(selector).expect("selector");
        let centre = self
            .eval(&format!(
                "(() => {{ const e = document.querySelector({selector_json}); if (!e) return null; \
                 e.scrollIntoView({{block: 'center'}}); const r = e.getBoundingClientRect(); \
                 return {{x: r.x + r.width / 2, y: r.y + r.height / 2}}; }})()"
            ))
            .await;
        let (Some(x), Some(y)) = (centre["x"].as_f64(), centre["y"].as_f64()) else {
            panic!("nothing on the page matches {selector}");
        };
        if navigates {
            self.mark_page().await;
        }
        for (kind, buttons) in [("mouseMoved", 0), ("mousePressed", 1), ("mouseReleased", 0)] {
            self.call(
                "Input.dispatchMouseEvent",
                json!({"type": kind, "x": x, "y": y, "button": "left", "buttons": buttons,
                       "clickCount": 1}),
            )
            .await;
        }
        if navigates {
            self.wait_for_new_page().await;
        }
    }

    /// A PNG screenshot of the viewport, also written to `path`.
    pub async fn screenshot(&mut self, path: &Path) -> Vec<u8> {
        let result = self
            .call("Page.captureScreenshot", json!({"format": "png"}))
            .await;
        let png = base64::engine::general_purpose::STANDARD
            .decode(result["data"].as_str().expect("screenshot data"))
            .expect("screenshot base64");
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir).expect("screenshot folder");
        }
        std::fs::write(path, &png).unwrap_or_else(|e| panic!("writing {}: {e}", path.display()));
        png
    }

    /// Script errors and security refusals (a Content-Security-Policy violation, say) the
    /// page reported so far.
    pub async fn page_errors(&mut self) -> Vec<String> {
        // A round trip brings in the events sent before it.
        self.eval("1").await;
        self.events
            .iter()
            .filter_map(|event| match event["method"].as_str() {
                Some("Runtime.exceptionThrown") => {
                    Some(event["params"]["exceptionDetails"].to_string())
                }
                Some("Log.entryAdded")
                    if event["params"]["entry"]["source"] == "security"
                        || (event["params"]["entry"]["level"] == "error"
                            && event["params"]["entry"]["source"] == "javascript") =>
                {
                    Some(event["params"]["entry"]["text"].to_string())
                }
                _ => None,
            })
            .collect()
    }
}

impl Drop for Browser {
    fn drop(&mut self) {
        // Chromium's helpers (renderer, zygote) share its process group.
        if let Some(pid) = self
            .child
            .id()
            .and_then(|id| rustix::process::Pid::from_raw(id as i32))
        {
            let _ = rustix::process::kill_process_group(pid, rustix::process::Signal::KILL);
        }
    }
}

/// What a screenshot holds, checked structurally.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PngSummary {
    /// Width in pixels.
    pub width: u32,
    /// Height in pixels.
    pub height: u32,
    /// Distinct pixel values (a blank page has one or two).
    pub distinct_colours: usize,
}

/// Decodes `png` (panicking if it is not a valid PNG) and summarizes it.
pub fn png_summary(png: &[u8]) -> PngSummary {
    let mut decoder = png::Decoder::new(std::io::Cursor::new(png));
    decoder.set_transformations(png::Transformations::EXPAND);
    let mut reader = decoder.read_info().expect("a PNG header");
    let mut pixels = vec![0; reader.output_buffer_size().expect("a PNG of a sane size")];
    let frame = reader.next_frame(&mut pixels).expect("the PNG's pixels");
    let channels = frame.color_type.samples() * (frame.bit_depth as usize).div_ceil(8);
    let distinct: std::collections::HashSet<&[u8]> = pixels[..frame.buffer_size()]
        .chunks_exact(channels)
        .collect();
    PngSummary {
        width: frame.width,
        height: frame.height,
        distinct_colours: distinct.len(),
    }
}
