//! The one tracing subscriber of the `lunlock` binary: events from every crate, with their spans (a connection's
//! peer, initiator, ISID and target; a command's LUN, task tag and operation), as text or as JSON lines on stderr.
//! `RUST_LOG`, when set, takes precedence over `--log-level`: it takes tracing-subscriber's filter directives, such
//! as `warn,lunlock_server=debug`.

use tracing::{Event, Level, Subscriber};
use tracing_subscriber::fmt::format::Writer;
use tracing_subscriber::fmt::{FmtContext, FormatEvent, FormatFields};
use tracing_subscriber::registry::LookupSpan;
use tracing_subscriber::EnvFilter;

/// `--log-format`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum LogFormat {
    /// One line per event: time, level, spans with their fields, message.
    Text,
    /// One JSON object per line, with the event's fields, its span and the spans it is in.
    Json,
}

/// `--log-level`: the least severe events shown.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum LogLevel {
    Error,
    Warn,
    Info,
    Debug,
    Trace,
}

impl LogLevel {
    fn directive(self) -> &'static str {
        match self {
            LogLevel::Error => "error",
            LogLevel::Warn => "warn",
            LogLevel::Info => "info",
            LogLevel::Debug => "debug",
            LogLevel::Trace => "trace",
        }
    }
}

/// Installs the subscriber.
pub fn init(format: LogFormat, level: LogLevel) -> Result<(), String> {
    let filter = filter(level, std::env::var("RUST_LOG").ok().as_deref())?;
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(false)
        .with_target(false);
    let installed = match format {
        LogFormat::Text => builder.try_init(),
        LogFormat::Json => builder
            .json()
            .flatten_event(true)
            .with_current_span(true)
            .with_span_list(true)
            .try_init(),
    };
    installed.map_err(|e| format!("cannot install the log subscriber: {e}"))
}

/// Installs the client commands' subscriber: their diagnostics on stderr as `lunlock: message` (a warning as
/// `lunlock: warning: message`), info and above unless RUST_LOG says otherwise. Their output proper, and the errors
/// that end them, stay plain text of their own.
pub fn init_client() -> Result<(), String> {
    tracing_subscriber::fmt()
        .with_env_filter(filter(
            LogLevel::Info,
            std::env::var("RUST_LOG").ok().as_deref(),
        )?)
        .with_writer(std::io::stderr)
        .with_ansi(false)
        .event_format(ClientLine)
        .try_init()
        .map_err(|e| format!("cannot install the log subscriber: {e}"))
}

/// One line per event, as a command-line tool writes them: no time, no spans.
struct ClientLine;

impl<S, N> FormatEvent<S, N> for ClientLine
where
    S: Subscriber + for<'a> LookupSpan<'a>,
    N: for<'a> FormatFields<'a> + 'static,
{
    fn format_event(
        &self,
        context: &FmtContext<'_, S, N>,
        mut writer: Writer<'_>,
        event: &Event<'_>,
    ) -> std::fmt::Result {
        write!(writer, "lunlock: ")?;
        match *event.metadata().level() {
            Level::ERROR => write!(writer, "error: ")?,
            Level::WARN => write!(writer, "warning: ")?,
            _ => {}
        }
        context
            .field_format()
            .format_fields(writer.by_ref(), event)?;
        writeln!(writer)
    }
}

/// The filter: RUST_LOG when it is set, else `--log-level`. A RUST_LOG that does not parse is an error.
fn filter(level: LogLevel, rust_log: Option<&str>) -> Result<EnvFilter, String> {
    match rust_log {
        Some(directives) if !directives.is_empty() => EnvFilter::try_new(directives)
            .map_err(|e| format!("RUST_LOG={directives:?} is not a valid filter: {e}")),
        _ => Ok(EnvFilter::new(level.directive())),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rust_log_wins_over_the_level_and_a_bad_one_is_named() {
        assert_eq!(filter(LogLevel::Info, None).unwrap().to_string(), "info");
        assert_eq!(
            filter(LogLevel::Warn, Some("")).unwrap().to_string(),
            "warn"
        );
        assert_eq!(
            filter(LogLevel::Info, Some("warn,lunlock_server=debug"))
                .unwrap()
                .to_string(),
            "lunlock_server=debug,warn"
        );
        let bad = filter(LogLevel::Info, Some("lunlock_server=loud")).unwrap_err();
        assert!(bad.contains("RUST_LOG"), "{bad}");
    }
}
