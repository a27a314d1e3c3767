//! The audit trail: one structured `tracing` event per unseal, seal, rewrap,
//! rotation, status probe or SES check — successful or not — at level INFO on
//! the target [`TARGET`]. Every event has the same fields so that a log
//! collector can rely on them:
//!
//! | field | meaning |
//! |---|---|
//! | `event` | `unseal`, `seal`, `rewrap`, `rotate`, `probe` (status), `ses-check` |
//! | `purpose` | the command that caused it (`unseal`, `ses-check`, `status`, …) |
//! | `file` | the sealed file, or `-` |
//! | `backend` | the stanza type(s) used or that failed, or `-` |
//! | `pcrs` | the PCR selection of that stanza, or `-` |
//! | `endpoint` | for `ses-check`: the SMTP `host:port`, else `-` |
//! | `generation` | the file's generation, when known |
//! | `outcome` | `ok` or `failed` |
//! | `reason` | why it failed (an error message, never a secret), or `-` |
//!
//! Never a secret: only names, paths and error messages that are built
//! without secret values.

use std::path::Path;

/// The `tracing` target of audit events.
pub const TARGET: &str = "sesame::audit";

/// How an audited operation ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Outcome {
    /// It worked.
    Ok,
    /// It failed; `reason` says why.
    Failed,
}

impl Outcome {
    fn word(self) -> &'static str {
        match self {
            Self::Ok => "ok",
            Self::Failed => "failed",
        }
    }
}

/// One audit record.
pub struct Audit<'a> {
    /// What happened: `unseal`, `seal`, `rewrap`, `rotate`, `probe`, `ses-check`.
    pub event: &'static str,
    /// The command that caused it.
    pub purpose: &'static str,
    /// The sealed file, if any.
    pub file: Option<&'a Path>,
    /// Stanza type(s), if known.
    pub backend: Option<&'a str>,
    /// PCR selection, if known.
    pub pcrs: Option<&'a str>,
    /// The SMTP endpoint of a `ses-check`.
    pub endpoint: Option<&'a str>,
    /// The file's generation, if known.
    pub generation: Option<u64>,
    /// The outcome.
    pub outcome: Outcome,
    /// Why it failed (no secret).
    pub reason: Option<&'a str>,
}

impl<'a> Audit<'a> {
    /// A record with nothing known yet and outcome [`Outcome::Failed`]; fill
    /// in the rest with struct update syntax.
    pub fn new(event: &'static str, purpose: &'static str) -> Self {
        Self {
            event,
            purpose,
            file: None,
            backend: None,
            pcrs: None,
            endpoint: None,
            generation: None,
            outcome: Outcome::Failed,
            reason: None,
        }
    }

    /// Emits this record as failed because of `error`.
    pub fn emit_failure(self, error: &dyn std::fmt::Display) {
        let reason = error.to_string();
        Audit {
            outcome: Outcome::Failed,
            reason: Some(&reason),
            ..self
        }
        .emit();
    }

    /// Emits the event.
    pub fn emit(&self) {
        let file = self
            .file
            .map_or_else(|| "-".to_owned(), |p| p.display().to_string());
        tracing::info!(
            target: TARGET,
            event = self.event,
            purpose = self.purpose,
            file = %file,
            backend = self.backend.unwrap_or("-"),
            pcrs = self.pcrs.unwrap_or("-"),
            endpoint = self.endpoint.unwrap_or("-"),
            generation = self.generation,
            outcome = self.outcome.word(),
            reason = self.reason.unwrap_or("-"),
            "{} {}",
            self.event,
            self.outcome.word(),
        );
    }
}
