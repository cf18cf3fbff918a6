//! The audit log: one JSON line per write call and one per member outcome. It only ever sees
//! group names, provider instance names, operations and member ids — never a secret or a URL.

use std::fs::{File, OpenOptions};
use std::io::{self, Write};
use std::path::Path;
use std::sync::Mutex;
use std::time::SystemTime;

use serde_json::json;

use crate::model::{MemberOutcome, OpKind, Outcome};

/// An append-only JSONL file, shared by every task of a run.
pub struct AuditLog {
    file: Mutex<File>,
}

impl AuditLog {
    /// Open (or create) the log for appending.
    pub fn open(path: &Path) -> io::Result<Self> {
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir)?;
        }
        let file = OpenOptions::new().create(true).append(true).open(path)?;
        Ok(AuditLog {
            file: Mutex::new(file),
        })
    }

    /// Record one write call and the outcome of each of its members.
    /// `requests`: the HTTP write requests the planned call took (more than one where the
    /// provider's limits or answers split it).
    #[allow(clippy::too_many_arguments)]
    pub fn call(
        &self,
        at: SystemTime,
        group: &str,
        provider: &str,
        op: OpKind,
        members: usize,
        requests: usize,
        outcomes: &[MemberOutcome],
    ) {
        let ts = humantime::format_rfc3339_millis(at).to_string();
        let failed = outcomes.iter().filter(|o| !o.outcome.is_ok()).count();
        let result = if failed == 0 {
            "ok"
        } else if failed == outcomes.len() {
            "failed"
        } else {
            "partial"
        };
        let mut lines = vec![json!({
            "ts": ts, "type": "call", "group": group, "provider": provider,
            "op": op, "members": members, "requests": requests, "result": result,
            "failed": failed,
        })];
        for o in outcomes {
            let (outcome, code, message) = match &o.outcome {
                Outcome::Done => ("done", None, None),
                Outcome::AlreadyDone => ("already_done", None, None),
                Outcome::Failed { code, message } => {
                    ("failed", Some(code.as_str()), Some(message.as_str()))
                }
                Outcome::Skipped { reason } => ("skipped", None, Some(reason.as_str())),
            };
            lines.push(json!({
                "ts": ts, "type": "member", "group": group, "provider": provider, "op": op,
                "member": o.member, "outcome": outcome, "code": code, "message": message,
            }));
        }
        let mut buf = String::new();
        for l in lines {
            buf.push_str(&l.to_string());
            buf.push('\n');
        }
        // A provider's message may repeat a credential: the log gets it masked.
        let buf = crate::redact::mask(&buf);
        let Ok(mut f) = self.file.lock() else { return };
        if let Err(e) = f.write_all(buf.as_bytes()).and_then(|_| f.flush()) {
            tracing::error!(error = %e, "cannot write the audit log");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::MemberId;

    #[test]
    fn each_call_appends_a_call_line_and_a_line_per_member() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("sub/audit.jsonl");
        let outcomes = [
            MemberOutcome::done(MemberId::new("a")),
            MemberOutcome::failed(MemberId::new("b"), "NOT_FOUND", "no such user"),
        ];
        AuditLog::open(&path).unwrap().call(
            SystemTime::UNIX_EPOCH,
            "team",
            "cc",
            OpKind::Add,
            2,
            1,
            &outcomes,
        );
        // A second open appends rather than truncating.
        AuditLog::open(&path).unwrap().call(
            SystemTime::UNIX_EPOCH,
            "team",
            "cc",
            OpKind::Remove,
            1,
            1,
            &[MemberOutcome::already(MemberId::new("c"))],
        );
        let text = std::fs::read_to_string(&path).unwrap();
        let lines: Vec<serde_json::Value> = text
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect();
        assert_eq!(lines.len(), 5);
        assert_eq!(lines[0]["type"], "call");
        assert_eq!(lines[0]["result"], "partial");
        assert_eq!(lines[0]["members"], 2);
        assert!(humantime::parse_rfc3339(lines[0]["ts"].as_str().unwrap()).is_ok());
        assert_eq!(lines[2]["member"], "b");
        assert_eq!(lines[2]["outcome"], "failed");
        assert_eq!(lines[2]["code"], "NOT_FOUND");
        assert_eq!(lines[3]["result"], "ok");
        assert_eq!(lines[4]["outcome"], "already_done");
    }

    #[test]
    fn a_credential_a_provider_repeats_is_masked_in_the_log() {
        crate::redact::register("audit-test-credential-42");
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("audit.jsonl");
        let echoed = MemberOutcome::failed(
            MemberId::new("a"),
            "AUTH",
            "the key audit-test-credential-42 is not allowed",
        );
        AuditLog::open(&path).unwrap().call(
            SystemTime::UNIX_EPOCH,
            "team",
            "cc",
            OpKind::Add,
            1,
            1,
            &[echoed],
        );
        let text = std::fs::read_to_string(&path).unwrap();
        assert!(!text.contains("audit-test-credential-42"), "{text}");
        assert!(text.contains("the key *** is not allowed"), "{text}");
    }
}
