//! Logging set-up shared by every binary: `tracing` to stderr, filtered by `RUST_LOG`
//! (default `info`), as human-readable lines or as JSON objects in Cloud Logging's structured
//! format.
//!
//! The JSON format ([`CloudLogging`]) writes one object per line with the keys Cloud Logging
//! reads from a container's stderr: `severity` (`DEBUG`, `INFO`, `WARNING`, `ERROR`),
//! `message`, `timestamp` (RFC 3339), and — when the event happens inside a span that recorded
//! a `trace_id` and a project is configured — `logging.googleapis.com/trace`
//! (`projects/P/traces/T`), which groups a request's lines under its trace in the console, and
//! `logging.googleapis.com/spanId` (the innermost span's id, 16 hex digits). The
//! event's own fields and those of every enclosing span (`request_id`, `run.id`,
//! `attempt.id`, …) are added as keys, the innermost winning.
//!
//! With the `otlp` feature and an endpoint, spans at info level and above (whatever the log
//! filter says) are also exported over OTLP/HTTP, in W3C traces: [`adopt_trace`] makes a span
//! the child of a remote one (a caller's `traceparent`, a run's stored trace) and
//! [`exported_ids`] names a span's place in its trace, for passing on. Both are no-ops without
//! the feature, so callers need not know whether spans are exported. [`Telemetry`], which
//! [`init`] returns, flushes the export when dropped.

use std::fmt;
use std::str::FromStr;

use serde_json::{Map, Value};
use tracing::field::{Field, Visit};
use tracing::{Event, Level, Subscriber};
use tracing_subscriber::EnvFilter;
use tracing_subscriber::fmt::format::{FormatEvent, FormatFields, JsonFields, Writer};
use tracing_subscriber::fmt::{FmtContext, FormattedFields};
use tracing_subscriber::registry::LookupSpan;

/// How log lines are written.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum LogFormat {
    /// Human-readable lines.
    #[default]
    Text,
    /// One JSON object per line in Cloud Logging's structured format.
    Json,
}

impl FromStr for LogFormat {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "text" => Ok(Self::Text),
            "json" => Ok(Self::Json),
            other => Err(format!(
                "unknown log format {other:?}; expected text or json"
            )),
        }
    }
}

/// Installs the global subscriber. `filter` is a `RUST_LOG`-style directive for log lines,
/// `project` the Google Cloud project whose traces JSON lines link to and `otlp` the OTLP/HTTP
/// endpoint spans are exported to (the caller's config reads all three); a second call is a
/// no-op, so tests may call it freely. Keep the returned [`Telemetry`] until the service has
/// stopped: dropping it sends the spans not yet exported.
pub fn init(
    format: LogFormat,
    filter: Option<&str>,
    project: Option<&str>,
    otlp: Option<&str>,
) -> Telemetry {
    use tracing_subscriber::Layer;
    use tracing_subscriber::layer::SubscriberExt;
    use tracing_subscriber::util::SubscriberInitExt;

    // Per layer, so that terse logs (`RUST_LOG=warn`) do not silence the exported spans.
    let filter = || {
        filter
            .and_then(|f| EnvFilter::try_new(f).ok())
            .unwrap_or_else(|| EnvFilter::new("info"))
    };
    let (text, json) = match format {
        LogFormat::Text => (
            Some(
                tracing_subscriber::fmt::layer()
                    .with_writer(std::io::stderr)
                    .with_filter(filter()),
            ),
            None,
        ),
        LogFormat::Json => (
            None,
            Some(
                tracing_subscriber::fmt::layer()
                    .with_writer(std::io::stderr)
                    .fmt_fields(JsonFields::new())
                    .event_format(CloudLogging::new(project))
                    .with_filter(filter()),
            ),
        ),
    };
    let (otel, telemetry, otel_error) = otlp_layer(otlp);
    let installed = tracing_subscriber::registry()
        .with(text)
        .with(json)
        .with(otel)
        .try_init()
        .is_ok();
    if let (true, Some(error)) = (installed, otel_error) {
        tracing::warn!("{error}");
    }
    telemetry
}

/// What [`init`] installed that needs stopping: the OTLP exporter, when there is one. Dropping
/// it exports the spans still batched (waiting at most [`SHUTDOWN_TIMEOUT`]) and stops the
/// export; spans that end later are not exported.
#[derive(Debug, Default)]
#[must_use = "dropping it stops the span export"]
pub struct Telemetry {
    #[cfg(feature = "otlp")]
    provider: Option<opentelemetry_sdk::trace::SdkTracerProvider>,
}

/// How long stopping waits for the last spans to be sent: a collector that is down must not
/// hold up a service that was asked to stop (Cloud Run kills it 10 s after SIGTERM).
pub const SHUTDOWN_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(3);

impl Drop for Telemetry {
    fn drop(&mut self) {
        // The batch processor exports every few seconds: without this, the last spans of a
        // short-lived process (and a stopping service's last ones) would be lost.
        #[cfg(feature = "otlp")]
        if let Some(provider) = self.provider.take()
            && let Err(e) = provider.shutdown_with_timeout(SHUTDOWN_TIMEOUT)
        {
            tracing::warn!(error = %e, "exporting the last spans failed");
        }
    }
}

/// The span layer exporting to `endpoint` over OTLP/HTTP (every span at info level and above),
/// the provider to stop, or why there is none.
#[cfg(feature = "otlp")]
fn otlp_layer<S>(
    endpoint: Option<&str>,
) -> (
    Option<impl tracing_subscriber::Layer<S>>,
    Telemetry,
    Option<String>,
)
where
    S: Subscriber + for<'a> LookupSpan<'a>,
{
    use opentelemetry::trace::TracerProvider as _;
    use opentelemetry_otlp::WithExportConfig;
    use tracing_subscriber::Layer;

    let Some(endpoint) = endpoint else {
        return (None, Telemetry::default(), None);
    };
    // The standard variable names the collector's base URL; traces go to its /v1/traces.
    let url = format!("{}/v1/traces", endpoint.trim_end_matches('/'));
    let exporter = match opentelemetry_otlp::SpanExporter::builder()
        .with_http()
        .with_endpoint(url)
        .build()
    {
        Ok(exporter) => exporter,
        Err(e) => {
            return (
                None,
                Telemetry::default(),
                Some(format!("OTLP export is off: {e}")),
            );
        }
    };
    let provider = opentelemetry_sdk::trace::SdkTracerProvider::builder()
        .with_batch_exporter(exporter)
        .build();
    let layer = tracing_opentelemetry::layer()
        .with_tracer(provider.tracer("runway"))
        .with_filter(tracing_subscriber::filter::LevelFilter::INFO);
    let telemetry = Telemetry {
        provider: Some(provider),
    };
    (Some(layer), telemetry, None)
}

/// Without the `otlp` feature there is no exporter; a configured endpoint only gets a warning.
#[cfg(not(feature = "otlp"))]
fn otlp_layer(
    endpoint: Option<&str>,
) -> (
    Option<tracing_subscriber::layer::Identity>,
    Telemetry,
    Option<String>,
) {
    let error = endpoint.map(|e| {
        format!(
            "OTEL_EXPORTER_OTLP_ENDPOINT is {e:?} but this build has no OTLP export \
             (build with the otlp feature)"
        )
    });
    (None, Telemetry::default(), error)
}

/// A span's place in its exported trace: 32 and 16 lowercase hex digits, as in a `traceparent`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SpanIds {
    /// The trace.
    pub trace_id: String,
    /// The span.
    pub span_id: String,
}

/// Where `span` is in its exported trace, so that work it hands on (a job's `TRACEPARENT`, a
/// stored run) can name it as parent; `None` when spans are not exported. This starts the
/// span's exported counterpart: call [`adopt_trace`] on it first, if at all.
pub fn exported_ids(span: &tracing::Span) -> Option<SpanIds> {
    #[cfg(feature = "otlp")]
    {
        use opentelemetry::trace::TraceContextExt;
        use tracing_opentelemetry::OpenTelemetrySpanExt;

        let context = span.context();
        let otel = context.span();
        let ids = otel.span_context();
        ids.is_valid().then(|| SpanIds {
            trace_id: ids.trace_id().to_string(),
            span_id: ids.span_id().to_string(),
        })
    }
    #[cfg(not(feature = "otlp"))]
    {
        let _ = span;
        None
    }
}

/// Makes `span` a child of span `parent_span_id` (16 hex digits) in trace `trace_id` (32) in
/// the exported traces, so that a run's spans form one trace across requests, tasks and
/// processes. Call it before `span` is first entered; malformed ids (or no export) leave it as
/// it was. The parent is taken as sampled whatever the caller's flags said: a run's later
/// stages (dispatch, callback) happen without the caller, and its trace is exported whole.
pub fn adopt_trace(span: &tracing::Span, trace_id: &str, parent_span_id: &str) {
    #[cfg(feature = "otlp")]
    {
        use opentelemetry::trace::{
            SpanContext, SpanId, TraceContextExt, TraceFlags, TraceId, TraceState,
        };
        use tracing_opentelemetry::{OpenTelemetrySpanExt, SetParentError};

        let (Ok(trace), Ok(parent)) = (
            TraceId::from_hex(trace_id),
            SpanId::from_hex(parent_span_id),
        ) else {
            return;
        };
        let parent = SpanContext::new(trace, parent, TraceFlags::SAMPLED, true, TraceState::NONE);
        if !parent.is_valid() {
            return;
        }
        // No layer (no endpoint) or a span filtered out: nothing is exported, nothing to do.
        let adopted =
            span.set_parent(opentelemetry::Context::new().with_remote_span_context(parent));
        debug_assert!(
            !matches!(adopted, Err(SetParentError::AlreadyStarted)),
            "adopt_trace on a span already started"
        );
    }
    #[cfg(not(feature = "otlp"))]
    {
        let _ = (span, trace_id, parent_span_id);
    }
}

/// The JSON event format Cloud Logging reads as structured entries (see the module docs).
#[derive(Debug, Clone, Default)]
pub struct CloudLogging {
    project: Option<String>,
}

impl CloudLogging {
    /// Lines that link to traces of `project`, when one is given.
    pub fn new(project: Option<&str>) -> Self {
        Self {
            project: project.filter(|p| !p.is_empty()).map(str::to_owned),
        }
    }

    /// The object for one event: its fields over its spans' fields, and the reserved keys.
    pub fn entry(
        &self,
        level: Level,
        target: &str,
        spans: impl IntoIterator<Item = Map<String, Value>>,
        event: Map<String, Value>,
        span_id: Option<u64>,
        now: chrono::DateTime<chrono::Utc>,
    ) -> Map<String, Value> {
        let mut entry = Map::new();
        // Outermost first, so an inner span's (and then the event's) field wins.
        for fields in spans {
            entry.extend(fields);
        }
        entry.extend(event);
        let severity = match level {
            Level::ERROR => "ERROR",
            Level::WARN => "WARNING",
            Level::INFO => "INFO",
            Level::DEBUG | Level::TRACE => "DEBUG",
        };
        entry.insert("severity".into(), severity.into());
        entry.insert(
            "timestamp".into(),
            now.to_rfc3339_opts(chrono::SecondsFormat::Micros, true)
                .into(),
        );
        entry.insert("target".into(), target.into());
        entry
            .entry("message")
            .or_insert_with(|| Value::String(String::new()));
        if let (Some(project), Some(trace)) =
            (&self.project, entry.get("trace_id").and_then(Value::as_str))
        {
            let trace = format!("projects/{project}/traces/{trace}");
            entry.insert("logging.googleapis.com/trace".into(), trace.into());
            // Cloud Logging wants the span id as 16 hex digits, like a traceparent's.
            if let Some(span) = span_id {
                entry.insert(
                    "logging.googleapis.com/spanId".into(),
                    format!("{span:016x}").into(),
                );
            }
        }
        entry
    }
}

impl<S, N> FormatEvent<S, N> for CloudLogging
where
    S: Subscriber + for<'a> LookupSpan<'a>,
    N: for<'a> FormatFields<'a> + 'static,
{
    fn format_event(
        &self,
        ctx: &FmtContext<'_, S, N>,
        mut writer: Writer<'_>,
        event: &Event<'_>,
    ) -> fmt::Result {
        let mut spans = Vec::new();
        let mut span_id = None;
        if let Some(scope) = ctx.event_scope() {
            for span in scope.from_root() {
                // From the root down, so the last one seen is the innermost.
                span_id = Some(span.id().into_u64());
                let extensions = span.extensions();
                let fields = extensions
                    .get::<FormattedFields<N>>()
                    .and_then(|f| serde_json::from_str::<Map<String, Value>>(f).ok())
                    .unwrap_or_default();
                spans.push(fields);
            }
        }
        let mut visitor = JsonVisitor(Map::new());
        event.record(&mut visitor);
        let metadata = event.metadata();
        let entry = self.entry(
            *metadata.level(),
            metadata.target(),
            spans,
            visitor.0,
            span_id,
            chrono::Utc::now(),
        );
        let line = serde_json::to_string(&entry).map_err(|_| fmt::Error)?;
        writeln!(writer, "{line}")
    }
}

/// Collects an event's fields as JSON values.
struct JsonVisitor(Map<String, Value>);

impl Visit for JsonVisitor {
    fn record_debug(&mut self, field: &Field, value: &dyn fmt::Debug) {
        self.0
            .insert(field.name().to_owned(), format!("{value:?}").into());
    }
    fn record_str(&mut self, field: &Field, value: &str) {
        self.0.insert(field.name().to_owned(), value.into());
    }
    fn record_i64(&mut self, field: &Field, value: i64) {
        self.0.insert(field.name().to_owned(), value.into());
    }
    fn record_u64(&mut self, field: &Field, value: u64) {
        self.0.insert(field.name().to_owned(), value.into());
    }
    fn record_f64(&mut self, field: &Field, value: f64) {
        self.0.insert(field.name().to_owned(), value.into());
    }
    fn record_bool(&mut self, field: &Field, value: bool) {
        self.0.insert(field.name().to_owned(), value.into());
    }
}

/// Where a request's caller is in a distributed trace, from its W3C `traceparent` header
/// (`00-TRACE-SPAN-FLAGS`) or Google's `X-Cloud-Trace-Context` (`TRACE/SPAN;o=1`, which Cloud
/// Run's front end adds).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RemoteParent {
    /// The trace: 32 lowercase hex digits, not all zero.
    pub trace_id: String,
    /// The caller's span, 16 lowercase hex digits, when the header names one (not all zero).
    pub span_id: Option<String>,
}

/// The caller's place in a trace as a request's headers name it (see [`RemoteParent`]); a
/// well-formed `traceparent` wins. Anything malformed is no trace.
pub fn remote_parent(
    traceparent: Option<&str>,
    cloud_trace_context: Option<&str>,
) -> Option<RemoteParent> {
    let valid = |id: &str| {
        id.len() == 32
            && id
                .bytes()
                .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
            && id.bytes().any(|b| b != b'0')
    };
    if let Some(header) = traceparent {
        let parts: Vec<&str> = header.trim().split('-').collect();
        if let [version, trace, span, flags] = parts[..]
            && version == "00"
            && valid(trace)
            && span.len() == 16
            && span.bytes().all(|b| b.is_ascii_hexdigit())
            && flags.len() == 2
        {
            return Some(RemoteParent {
                trace_id: trace.to_owned(),
                span_id: span
                    .bytes()
                    .any(|b| b != b'0')
                    .then(|| span.to_ascii_lowercase()),
            });
        }
    }
    let (trace, rest) = match cloud_trace_context?.split_once('/') {
        Some((trace, rest)) => (trace, Some(rest)),
        None => (cloud_trace_context?.split(';').next()?, None),
    };
    let trace = trace.to_ascii_lowercase();
    // Its span id is decimal.
    let span_id = rest
        .and_then(|r| r.split(';').next())
        .and_then(|s| s.parse::<u64>().ok())
        .filter(|&s| s != 0)
        .map(|s| format!("{s:016x}"));
    valid(&trace).then_some(RemoteParent {
        trace_id: trace,
        span_id,
    })
}

/// The trace id of a request (see [`remote_parent`]).
pub fn trace_id(traceparent: Option<&str>, cloud_trace_context: Option<&str>) -> Option<String> {
    remote_parent(traceparent, cloud_trace_context).map(|p| p.trace_id)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn an_entry_has_cloud_loggings_keys_and_links_its_trace() {
        let logging = CloudLogging::new(Some("my-project"));
        let span = json!({"request_id": "r-1", "trace_id": "4bf92f3577b34da6a3ce929d0e0e4736", "run.id": "outer"});
        let inner = json!({"run.id": "inner"});
        let event = json!({"message": "run created", "duration_ms": 3});
        let at = chrono::DateTime::parse_from_rfc3339("2026-12-04T12:00:00Z")
            .expect("time")
            .with_timezone(&chrono::Utc);
        let entry = logging.entry(
            Level::WARN,
            "runway_launcher::api",
            [span, inner].map(|v| v.as_object().cloned().expect("object")),
            event.as_object().cloned().expect("object"),
            Some(0xab),
            at,
        );
        assert_eq!(entry["severity"], "WARNING");
        assert_eq!(entry["message"], "run created");
        assert_eq!(entry["timestamp"], "2026-12-04T12:00:00.000000Z");
        assert_eq!(entry["run.id"], "inner", "the innermost span wins");
        assert_eq!(entry["duration_ms"], 3);
        assert_eq!(
            entry["logging.googleapis.com/trace"],
            "projects/my-project/traces/4bf92f3577b34da6a3ce929d0e0e4736"
        );
        assert_eq!(entry["logging.googleapis.com/spanId"], "00000000000000ab");
        // Without a project there is nothing to link to.
        let entry = CloudLogging::new(None).entry(Level::ERROR, "t", [], Map::new(), None, at);
        assert_eq!(entry["severity"], "ERROR");
        assert_eq!(entry["message"], "");
        assert!(!entry.contains_key("logging.googleapis.com/trace"));
        assert!(!entry.contains_key("logging.googleapis.com/spanId"));
    }

    #[test]
    fn trace_ids_come_from_well_formed_headers_only() {
        let trace = "4bf92f3577b34da6a3ce929d0e0e4736";
        let parent = format!("00-{trace}-00f067aa0ba902b7-01");
        assert_eq!(trace_id(Some(&parent), None).as_deref(), Some(trace));
        let cloud = format!("{}/1;o=1", trace.to_uppercase());
        assert_eq!(trace_id(None, Some(&cloud)).as_deref(), Some(trace));
        for bad in [
            "01-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            "00-00000000000000000000000000000000-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e473-00f067aa0ba902b7-01",
            "00-4BF92F3577B34DA6A3CE929D0E0E4736-00f067aa0ba902b7-01",
            "garbage",
        ] {
            assert_eq!(trace_id(Some(bad), None), None, "{bad}");
        }
        assert_eq!(
            trace_id(Some("garbage"), Some(&cloud)).as_deref(),
            Some(trace)
        );
        assert_eq!(trace_id(None, Some("xyz/1")), None);
    }

    #[test]
    fn a_remote_parent_names_the_callers_span_as_16_hex_digits() {
        let trace = "4bf92f3577b34da6a3ce929d0e0e4736";
        let parent = |span: Option<&str>| RemoteParent {
            trace_id: trace.to_owned(),
            span_id: span.map(str::to_owned),
        };
        let header = format!("00-{trace}-00F067AA0BA902B7-01");
        assert_eq!(
            remote_parent(Some(&header), None),
            Some(parent(Some("00f067aa0ba902b7")))
        );
        // An all-zero span id names no span (W3C), but the trace stands.
        let header = format!("00-{trace}-0000000000000000-01");
        assert_eq!(remote_parent(Some(&header), None), Some(parent(None)));
        // X-Cloud-Trace-Context's span id is decimal.
        let cloud = format!("{trace}/15744730036339290807;o=1");
        assert_eq!(
            remote_parent(None, Some(&cloud)),
            Some(parent(Some("da80848c846d32b7")))
        );
        for cloud in [
            format!("{trace}/0;o=1"),
            format!("{trace}/x"),
            trace.to_owned(),
        ] {
            assert_eq!(
                remote_parent(None, Some(&cloud)),
                Some(parent(None)),
                "{cloud}"
            );
        }
    }

    /// Without an exporter installed (as in these tests, whatever the features), spans have no
    /// exported ids and adopting a trace leaves them alone.
    #[test]
    fn without_an_exporter_spans_have_no_exported_ids() {
        let span = tracing::info_span!("s");
        adopt_trace(
            &span,
            "4bf92f3577b34da6a3ce929d0e0e4736",
            "00f067aa0ba902b7",
        );
        assert_eq!(exported_ids(&span), None);
    }

    /// The exporting side, against the SDK with an exporter that keeps what it gets.
    #[cfg(feature = "otlp")]
    mod exported {
        use super::super::*;
        use opentelemetry::trace::{SpanId, TracerProvider as _};
        use opentelemetry_sdk::error::OTelSdkResult;
        use opentelemetry_sdk::trace::{SdkTracerProvider, SpanData, SpanExporter};
        use std::sync::{Arc, Mutex};
        use tracing_subscriber::layer::SubscriberExt;

        #[derive(Debug, Clone, Default)]
        struct Kept(Arc<Mutex<Vec<SpanData>>>);

        impl SpanExporter for Kept {
            async fn export(&self, batch: Vec<SpanData>) -> OTelSdkResult {
                self.0.lock().expect("lock").extend(batch);
                Ok(())
            }
        }

        #[test]
        fn an_adopted_span_hangs_under_its_remote_parent_and_names_its_place() {
            let kept = Kept::default();
            let provider = SdkTracerProvider::builder()
                .with_simple_exporter(kept.clone())
                .build();
            let subscriber = tracing_subscriber::registry()
                .with(tracing_opentelemetry::layer().with_tracer(provider.tracer("test")));
            let trace = "4bf92f3577b34da6a3ce929d0e0e4736";
            let (adopted, child, malformed) = tracing::subscriber::with_default(subscriber, || {
                let adopted = tracing::info_span!("adopted");
                adopt_trace(&adopted, trace, "00f067aa0ba902b7");
                let child = adopted.in_scope(|| exported_ids(&tracing::info_span!("child")));
                let malformed = tracing::info_span!("malformed");
                adopt_trace(&malformed, "not a trace", "00f067aa0ba902b7");
                adopt_trace(&malformed, trace, "0000000000000000");
                (exported_ids(&adopted), child, exported_ids(&malformed))
            });
            provider.shutdown().expect("shutdown");
            let (adopted, child, malformed) = (
                adopted.expect("ids"),
                child.expect("ids"),
                malformed.expect("ids"),
            );
            assert_eq!(adopted.trace_id, trace);
            assert_eq!(child.trace_id, trace, "children stay in the adopted trace");
            assert_ne!(malformed.trace_id, trace, "malformed ids are not adopted");

            let spans = kept.0.lock().expect("lock");
            let span = |name: &str| {
                spans
                    .iter()
                    .find(|s| s.name == name)
                    .unwrap_or_else(|| panic!("{name} was exported"))
            };
            let exported = span("adopted");
            assert_eq!(exported.span_context.span_id().to_string(), adopted.span_id);
            assert_eq!(exported.parent_span_id.to_string(), "00f067aa0ba902b7");
            assert!(exported.parent_span_is_remote);
            assert!(exported.span_context.is_sampled());
            assert_eq!(
                span("child").parent_span_id.to_string(),
                adopted.span_id,
                "exported_ids names the span its children hang under"
            );
            assert_eq!(span("malformed").parent_span_id, SpanId::INVALID);
        }
    }
}
