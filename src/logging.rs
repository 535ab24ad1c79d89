//! The one logger of every subcommand: a `log` facade backend writing JSON lines
//! (`{"time","level","target","msg"}`, RFC 3339 UTC time with microseconds) to a file, stdout or
//! stderr, plus the one record per CNI verb. The plugin and the agent never log to stdout (the
//! CNI result and the flow records go there); the installer does. A log that cannot be written
//! never fails a verb: the line goes to stderr instead.

use std::fs::OpenOptions;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::OnceLock;
use std::time::{SystemTime, UNIX_EPOCH};

use serde::Serialize;

/// RFC 3339 UTC timestamp with microseconds.
pub fn rfc3339(t: SystemTime) -> String {
    let d = t.duration_since(UNIX_EPOCH).unwrap_or_default();
    let secs = d.as_secs() as i64;
    let (days, rem) = (secs.div_euclid(86400), secs.rem_euclid(86400));
    // Civil date from days since 1970-01-01 (Howard Hinnant's algorithm).
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + if month <= 2 { 1 } else { 0 };
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}.{:06}Z",
        rem / 3600,
        rem / 60 % 60,
        rem % 60,
        d.subsec_micros()
    )
}

fn append_line(path: &Path, line: &str) -> std::io::Result<()> {
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir)?;
    }
    let mut f = OpenOptions::new().create(true).append(true).open(path)?;
    // One write per line: O_APPEND keeps concurrent plugin runs from interleaving records.
    let mut buf = line.as_bytes().to_vec();
    buf.push(b'\n');
    f.write_all(&buf)
}

/// Where log lines go.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Sink {
    /// Appended to a file (created with its directory); stderr when that fails.
    File(PathBuf),
    Stdout,
    Stderr,
}

struct JsonLogger {
    sink: Sink,
    level: log::LevelFilter,
}

#[derive(Serialize)]
struct LogLine<'a> {
    time: String,
    level: &'a str,
    target: &'a str,
    msg: String,
}

fn level_name(l: log::Level) -> &'static str {
    match l {
        log::Level::Error => "error",
        log::Level::Warn => "warn",
        log::Level::Info => "info",
        log::Level::Debug => "debug",
        log::Level::Trace => "trace",
    }
}

impl log::Log for JsonLogger {
    fn enabled(&self, m: &log::Metadata<'_>) -> bool {
        m.level() <= self.level
    }
    fn log(&self, r: &log::Record<'_>) {
        if !self.enabled(r.metadata()) {
            return;
        }
        let line = LogLine {
            time: rfc3339(SystemTime::now()),
            level: level_name(r.level()),
            target: r.target(),
            msg: r.args().to_string(),
        };
        let Ok(text) = serde_json::to_string(&line) else {
            return;
        };
        match &self.sink {
            Sink::File(p) => {
                if append_line(p, &text).is_err() {
                    eprintln!("{text}");
                }
            }
            Sink::Stdout => {
                let mut out = std::io::stdout().lock();
                let _ = writeln!(out, "{text}");
            }
            Sink::Stderr => eprintln!("{text}"),
        }
    }
    fn flush(&self) {
        if self.sink == Sink::Stdout {
            let _ = std::io::stdout().flush();
        }
    }
}

static LOGGER: OnceLock<JsonLogger> = OnceLock::new();

/// Installs the logger once per process; later calls are ignored.
pub fn init(sink: Sink, level: log::LevelFilter) {
    let logger = LOGGER.get_or_init(|| JsonLogger { sink, level });
    if log::set_logger(logger).is_ok() {
        log::set_max_level(logger.level);
    }
}

impl Sink {
    /// The file when one is given, else stderr.
    pub fn file_or_stderr(path: Option<&Path>) -> Sink {
        path.map_or(Sink::Stderr, |p| Sink::File(p.to_path_buf()))
    }
}

/// The plugin's logger: the conflist's `logFile` at its `logLevel`; without a file, warnings and
/// errors only, to stderr (which the runtime shows when a verb fails).
pub fn init_plugin(path: Option<&Path>, level: log::LevelFilter) {
    let level = if path.is_some() {
        level
    } else {
        level.min(log::LevelFilter::Warn)
    };
    init(Sink::file_or_stderr(path), level);
}

/// One record per CNI verb.
#[derive(Debug, Clone, Default, Serialize, serde::Deserialize)]
pub struct VerbRecord {
    pub time: String,
    pub verb: String,
    pub container_id: String,
    #[serde(flatten)]
    pub pod: crate::guard::PodIdentity,
    pub mode: Option<String>,
    pub placement: Option<String>,
    pub table: Option<String>,
    pub device: Option<String>,
    pub entries: Option<usize>,
    pub outcome: String,
    pub error_code: Option<u32>,
    pub error: Option<String>,
    pub duration_us: u128,
}

/// Appends the record to `path`; failures go to stderr only.
pub fn write_record(path: Option<&Path>, record: &VerbRecord) {
    let Some(path) = path else { return };
    match serde_json::to_string(record) {
        Ok(text) => {
            if let Err(e) = append_line(path, &text) {
                eprintln!(
                    "egress-guard: cannot write log file {}: {e}",
                    path.display()
                );
            }
        }
        Err(e) => eprintln!("egress-guard: cannot encode log record: {e}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn formats_timestamps() {
        assert_eq!(rfc3339(UNIX_EPOCH), "1970-01-01T00:00:00.000000Z");
        let t = UNIX_EPOCH + Duration::from_micros(1_795_450_000_123_456);
        assert_eq!(rfc3339(t), "2026-11-23T16:06:40.123456Z");
        let leap = UNIX_EPOCH + Duration::from_secs(951_782_400); // 2000-02-29
        assert_eq!(&rfc3339(leap)[..10], "2000-02-29");
        let t = UNIX_EPOCH + Duration::from_millis(1_709_210_096_789);
        assert_eq!(rfc3339(t), "2024-02-29T12:34:56.789000Z");
    }

    #[test]
    fn lines_name_time_level_target_and_message() {
        let line = LogLine {
            time: rfc3339(UNIX_EPOCH),
            level: level_name(log::Level::Warn),
            target: "egress_guard::install",
            msg: "chained".into(),
        };
        assert_eq!(
            serde_json::to_string(&line).unwrap(),
            r#"{"time":"1970-01-01T00:00:00.000000Z","level":"warn","target":"egress_guard::install","msg":"chained"}"#
        );
    }
}
