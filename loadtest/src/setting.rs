//! The text form of the server settings a run passes to a spawned
//! server: the load tester holds typed values, and the server's syntax for
//! them lives here, apart from both the command line that reads them and
//! the code that starts the server.

use std::time::Duration;

use admedia_actors::config::{JobRetention, WaitLimits};
use serde::Serializer;

/// A value the spawned server reads from one of its variables, and the
/// text that variable is given. Every setting a run passes to the server
/// is turned into text here, so the load tester holds typed values and
/// the server's syntax lives in one place.
pub trait Setting {
    fn setting(&self) -> String;
}

/// `ADMEDIA_QUARANTINE_BASE`, `ADMEDIA_GIFT_SWEEP` and every duration
/// inside a per-tier or per-state setting: the largest of the server's
/// units (`d`, `h`, `m`, `s`, `ms`) that states it exactly. The server
/// reads whole milliseconds, and so do the flags these values come from.
impl Setting for Duration {
    fn setting(&self) -> String {
        let ms = self.as_millis();
        let units = [
            ("d", 86_400_000),
            ("h", 3_600_000),
            ("m", 60_000),
            ("s", 1_000),
        ];
        match units.iter().find(|(_, per)| ms != 0 && ms % per == 0) {
            Some((unit, per)) => format!("{}{unit}", ms / per),
            None => format!("{ms}ms"),
        }
    }
}

/// `ADMEDIA_MAX_WAIT`: every tier named, so the server's defaults for
/// unnamed tiers no longer matter once the value is read.
impl Setting for WaitLimits {
    fn setting(&self) -> String {
        let pairs: Vec<String> = self
            .0
            .iter()
            .map(|(tier, limit)| format!("{}={}", tier.as_str(), limit.setting()))
            .collect();
        pairs.join(",")
    }
}

/// `ADMEDIA_JOB_RETENTION`: every final state named.
impl Setting for JobRetention {
    fn setting(&self) -> String {
        format!(
            "succeeded={},cancelled={},failed={}",
            self.succeeded.setting(),
            self.cancelled.setting(),
            self.failed.setting()
        )
    }
}

/// A setting in report.json: the text the server was given, or null.
pub fn as_setting<T: Setting, S: Serializer>(v: &Option<T>, s: S) -> Result<S::Ok, S::Error> {
    match v {
        Some(v) => s.serialize_some(&v.setting()),
        None => s.serialize_none(),
    }
}
