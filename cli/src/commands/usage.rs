//! `usage`: how much the caller stores and has in progress, against the server's limits.
//!
//! The numbers are the server's (GetUsage); this module only words them. Quotas count
//! uploads in progress from the moment they start, so a second line shows what is
//! reserved when anything is.

use serde::Serialize;
use strongbox_proto::storage::v1::{GetUsageRequest, GetUsageResponse};

use crate::commands::Context;
use crate::errors::CliError;
use crate::output::human_size;
use crate::session::Session;

/// The usage as `usage --json` prints it: the response's fields under stable snake_case
/// names, the quotas `null` when unlimited.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Usage {
    bytes_used: u64,
    files: u64,
    bytes_reserved: u64,
    open_sessions: u32,
    uploads_in_progress: u32,
    quota_bytes: Option<u64>,
    max_files: Option<u64>,
    max_open_sessions: u32,
    max_concurrent_uploads: u32,
}

impl From<GetUsageResponse> for Usage {
    fn from(usage: GetUsageResponse) -> Self {
        Self {
            bytes_used: usage.bytes_used,
            files: usage.files,
            bytes_reserved: usage.bytes_reserved,
            open_sessions: usage.open_sessions,
            uploads_in_progress: usage.uploads_in_progress,
            quota_bytes: usage.quota_bytes,
            max_files: usage.max_files,
            max_open_sessions: usage.max_open_sessions,
            max_concurrent_uploads: usage.max_concurrent_uploads,
        }
    }
}

pub async fn usage(context: &Context) -> Result<(), CliError> {
    let mut session = Session::resume(context).await?;
    let usage: Usage = session
        .call(|mut clients| async move {
            Ok(clients
                .storage
                .get_usage(GetUsageRequest {})
                .await?
                .into_inner())
        })
        .await?
        .into();
    context.out.result(&usage, || usage.describe());
    Ok(())
}

impl Usage {
    /// `12.3 MiB of 1.0 GiB used (1.2%), 4 files of 100`, then a line for uploads in
    /// progress when there are any.
    fn describe(&self) -> String {
        let mut text = self.stored();
        if let Some(in_progress) = self.in_progress() {
            text.push('\n');
            text.push_str(&in_progress);
        }
        text
    }

    fn stored(&self) -> String {
        let bytes = match self.quota_bytes {
            Some(quota) => format!(
                "{} of {} used ({})",
                human_size(self.bytes_used),
                human_size(quota),
                percent(self.bytes_used, quota)
            ),
            None => format!("{} used", human_size(self.bytes_used)),
        };
        let files = match self.max_files {
            Some(max) => format!("{} of {max}", count(self.files, "file")),
            None => count(self.files, "file"),
        };
        let unlimited = if self.quota_bytes.is_none() && self.max_files.is_none() {
            " (no quota)"
        } else {
            ""
        };
        format!("{bytes}, {files}{unlimited}")
    }

    /// `in progress: 1 upload (at most 4 at once), 1 open session (at most 16), 9.0 MiB
    /// reserved`; only the parts that are not zero, and nothing when all are.
    fn in_progress(&self) -> Option<String> {
        let mut parts = Vec::new();
        if self.uploads_in_progress > 0 {
            parts.push(format!(
                "{} (at most {} at once)",
                count(self.uploads_in_progress.into(), "upload"),
                self.max_concurrent_uploads
            ));
        }
        if self.open_sessions > 0 {
            parts.push(format!(
                "{} (at most {})",
                count(self.open_sessions.into(), "open session"),
                self.max_open_sessions
            ));
        }
        if self.bytes_reserved > 0 {
            parts.push(format!("{} reserved", human_size(self.bytes_reserved)));
        }
        (!parts.is_empty()).then(|| format!("in progress: {}", parts.join(", ")))
    }
}

/// `1.2%`: tenths of a percent, rounded down, so "100.0%" means the quota is reached.
fn percent(used: u64, quota: u64) -> String {
    if quota == 0 {
        return "100.0%".to_owned();
    }
    let tenths = u128::from(used) * 1000 / u128::from(quota);
    format!("{}.{}%", tenths / 10, tenths % 10)
}

/// `1 file`, `4 files`.
fn count(n: u64, noun: &str) -> String {
    if n == 1 {
        format!("1 {noun}")
    } else {
        format!("{n} {noun}s")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MIB: u64 = 1024 * 1024;
    const GIB: u64 = 1024 * MIB;

    fn usage(bytes_used: u64, files: u64) -> Usage {
        Usage {
            bytes_used,
            files,
            bytes_reserved: 0,
            open_sessions: 0,
            uploads_in_progress: 0,
            quota_bytes: None,
            max_files: None,
            max_open_sessions: 16,
            max_concurrent_uploads: 4,
        }
    }

    #[test]
    fn unlimited_usage_says_there_is_no_quota() {
        assert_eq!(
            usage(12 * MIB + 300 * 1024, 4).describe(),
            "12.3 MiB used, 4 files (no quota)"
        );
        assert_eq!(usage(0, 1).describe(), "0 B used, 1 file (no quota)");
    }

    #[test]
    fn quotas_show_the_share_used() {
        let limited = Usage {
            quota_bytes: Some(GIB),
            max_files: Some(100),
            ..usage(12 * MIB + 300 * 1024, 4)
        };
        assert_eq!(
            limited.describe(),
            "12.3 MiB of 1.0 GiB used (1.2%), 4 files of 100"
        );
        let files_only = Usage {
            max_files: Some(10),
            ..usage(MIB, 1)
        };
        assert_eq!(files_only.describe(), "1.0 MiB used, 1 file of 10");
    }

    #[test]
    fn the_percentage_rounds_down() {
        assert_eq!(percent(0, GIB), "0.0%");
        assert_eq!(percent(GIB / 4, GIB), "25.0%");
        assert_eq!(percent(GIB - 1, GIB), "99.9%");
        assert_eq!(percent(GIB, GIB), "100.0%");
        assert_eq!(percent(u64::MAX, u64::MAX), "100.0%");
        assert_eq!(percent(0, 0), "100.0%");
    }

    #[test]
    fn uploads_in_progress_get_a_line_with_their_limits() {
        let busy = Usage {
            uploads_in_progress: 1,
            open_sessions: 2,
            bytes_reserved: 9 * MIB,
            ..usage(0, 0)
        };
        assert_eq!(
            busy.describe(),
            "0 B used, 0 files (no quota)\n\
             in progress: 1 upload (at most 4 at once), 2 open sessions (at most 16), \
             9.0 MiB reserved"
        );
    }
}
