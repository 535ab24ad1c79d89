//! JSON-lines logging to the conflist's `logFile`: a `log` facade backend for messages and one
//! record per CNI verb. Never writes to stdout (the CNI result goes there). A log that cannot be
//! written never fails a verb.

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

struct FileLogger {
    path: Option<PathBuf>,
    level: log::LevelFilter,
}

#[derive(Serialize)]
struct LogLine<'a> {
    time: String,
    level: &'a str,
    msg: String,
}

impl log::Log for FileLogger {
    fn enabled(&self, m: &log::Metadata<'_>) -> bool {
        m.level() <= self.level
    }
    fn log(&self, r: &log::Record<'_>) {
        if !self.enabled(r.metadata()) {
            return;
        }
        let line = LogLine {
            time: rfc3339(SystemTime::now()),
            level: r.level().as_str(),
            msg: r.args().to_string(),
        };
        let Ok(text) = serde_json::to_string(&line) else {
            return;
        };
        match &self.path {
            Some(p) => {
                if append_line(p, &text).is_err() {
                    eprintln!("{text}");
                }
            }
            None => eprintln!("{text}"),
        }
    }
    fn flush(&self) {}
}

static LOGGER: OnceLock<FileLogger> = OnceLock::new();

/// Installs the logger once; later calls are ignored. Without a file, warnings go to stderr.
pub fn init(path: Option<&Path>, level: log::LevelFilter) {
    let level = if path.is_none() {
        level.min(log::LevelFilter::Warn)
    } else {
        level
    };
    let logger = LOGGER.get_or_init(|| FileLogger {
        path: path.map(Path::to_path_buf),
        level,
    });
    if log::set_logger(logger).is_ok() {
        log::set_max_level(logger.level);
    }
}

/// One record per CNI verb.
#[derive(Debug, Clone, Default, Serialize)]
pub struct VerbRecord {
    pub time: String,
    pub verb: String,
    pub container_id: String,
    pub pod_namespace: Option<String>,
    pub pod_name: Option<String>,
    pub pod_uid: Option<String>,
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
    }
}
