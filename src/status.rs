//! Health of a sealed file, for `sesame status` and monitoring agents: can
//! each stanza unseal right now, how old is the credential, has the TPM's PCR
//! policy drifted. Levels follow the Nagios plugin convention.
//!
//! No I/O and no logging here: the caller reads the file, supplies the
//! backends and the clock, and reports. Unsealed plaintext only lives inside
//! [`examine`] (to authenticate the payload and read its `created` field) and
//! is wiped before it returns.

use std::fmt;
use std::time::{Duration, SystemTime};

use crate::backend::{BackendError, KeyBackend};
use crate::envelope;
use crate::format::{self, FormatError, Header, Stanza};
use crate::secret::SecretDocument;

/// Seconds in a day, for rotation periods given in days.
pub const DAY: Duration = Duration::from_secs(86_400);

/// Default credential rotation period.
pub const DEFAULT_ROTATION_DAYS: u64 = 90;

/// A monitoring level, with the Nagios plugin exit codes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Level {
    /// Everything fine (exit 0).
    Ok,
    /// Needs attention soon: credential past its rotation period, a backend
    /// that cannot unseal while another can (exit 1).
    Warning,
    /// Broken: nothing here can unseal, the file is unreadable or tampered (exit 2).
    Critical,
    /// The check itself could not run: bad arguments, no files (exit 3).
    Unknown,
}

impl Level {
    /// The plugin exit code.
    pub fn code(self) -> u8 {
        match self {
            Self::Ok => 0,
            Self::Warning => 1,
            Self::Critical => 2,
            Self::Unknown => 3,
        }
    }

    /// The conventional upper-case name.
    pub fn name(self) -> &'static str {
        match self {
            Self::Ok => "OK",
            Self::Warning => "WARNING",
            Self::Critical => "CRITICAL",
            Self::Unknown => "UNKNOWN",
        }
    }

    /// Severity for combining several results: CRITICAL > UNKNOWN > WARNING > OK
    /// (an unknown state may hide a critical one, so it outranks a warning).
    fn severity(self) -> u8 {
        match self {
            Self::Ok => 0,
            Self::Warning => 1,
            Self::Unknown => 2,
            Self::Critical => 3,
        }
    }

    /// The more severe of two levels.
    pub fn worst(self, other: Self) -> Self {
        if other.severity() > self.severity() {
            other
        } else {
            self
        }
    }
}

impl fmt::Display for Level {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// Whether a stanza's sealed PCR policy still matches the machine.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Drift {
    /// The stanza is not bound to PCRs (PKCS#11, or a TPM stanza with `none`).
    NotApplicable,
    /// Could not be determined; the reason says why.
    Unknown(String),
    /// The current PCR values satisfy the sealed policy.
    Unchanged,
    /// The current PCR values no longer satisfy the policy; which ones changed.
    Changed(String),
}

impl Drift {
    /// Short machine-friendly word: `n/a`, `unknown`, `unchanged`, `changed`.
    pub fn word(&self) -> &'static str {
        match self {
            Self::NotApplicable => "n/a",
            Self::Unknown(_) => "unknown",
            Self::Unchanged => "unchanged",
            Self::Changed(_) => "changed",
        }
    }

    /// The detail, if any.
    pub fn detail(&self) -> Option<&str> {
        match self {
            Self::Unknown(s) | Self::Changed(s) => Some(s),
            _ => None,
        }
    }
}

/// The hook through which a backend reports PCR drift: from the unseal
/// attempt [`examine`] just made when that settles it (the key was released,
/// so the policy held; or the backend refused naming the changed PCRs), else
/// by reading the current PCR values and comparing them with the policy
/// recorded in the stanza, without unsealing. The TPM backend implements it;
/// any stanza type without an implementation is reported as
/// [`Drift::Unknown`] if it names PCRs, and [`Drift::NotApplicable`]
/// otherwise.
pub trait PolicyPreflight {
    /// The stanza type this preflight understands, e.g. `"tpm2"`.
    fn kind(&self) -> &'static str;

    /// Compares the stanza's sealed policy with the machine's current state;
    /// `probe` is the unseal attempt just made with this stanza.
    fn drift(&mut self, stanza: &Stanza, probe: &Probe) -> Drift;
}

/// The result of trying one stanza.
#[derive(Debug)]
pub enum Probe {
    /// The backend released the key and it opened the payload.
    Unsealed,
    /// The backend did not release the key.
    Failed(BackendError),
    /// No backend for this stanza type in this build (or restricted away).
    NoBackend,
    /// A key was released but did not open the payload: the file was modified.
    Tampered,
}

impl Probe {
    /// True when this stanza can unseal now.
    pub fn ok(&self) -> bool {
        matches!(self, Self::Unsealed)
    }

    /// `ok`, or why not (never a secret).
    pub fn describe(&self) -> String {
        match self {
            Self::Unsealed => "ok".into(),
            Self::Failed(e) => e.to_string(),
            Self::NoBackend => "no backend for this stanza type here".into(),
            Self::Tampered => {
                "authentication failed: the file was modified or the stanza belongs to another file"
                    .into()
            }
        }
    }
}

/// One stanza's state.
#[derive(Debug)]
pub struct StanzaReport {
    /// 1-based position in the file.
    pub number: usize,
    /// Stanza type.
    pub kind: String,
    /// The PCR selection the stanza is bound to, if it records one.
    pub pcrs: Option<String>,
    /// Whether it can unseal right now.
    pub probe: Probe,
    /// PCR drift.
    pub drift: Drift,
}

/// Where the credential's age comes from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AgeSource {
    /// The sealed document's `created` field (set by `seal --ses`): the
    /// credential's own age, unchanged by rewrapping.
    Document,
    /// The header's `created`: when the file was last sealed.
    Header,
}

impl AgeSource {
    /// `document` or `header`.
    pub fn word(self) -> &'static str {
        match self {
            Self::Document => "document",
            Self::Header => "header",
        }
    }
}

/// The state of one sealed file.
#[derive(Debug)]
pub struct FileReport {
    /// The file's header.
    pub header: Header,
    /// One entry per stanza, in file order.
    pub stanzas: Vec<StanzaReport>,
    /// The creation time used for the age (RFC 3339 text as stored).
    pub created: String,
    /// Where `created` comes from.
    pub age_source: AgeSource,
    /// The credential's age, if `created` parses and is not in the future.
    pub age: Option<Duration>,
    /// The rotation period applied (`None`: age not checked).
    pub rotation: Option<Duration>,
    /// Problems found, each with its level.
    pub problems: Vec<(Level, String)>,
}

impl FileReport {
    /// The file's level: the worst of its problems, OK if none.
    pub fn level(&self) -> Level {
        self.problems
            .iter()
            .fold(Level::Ok, |acc, (level, _)| acc.worst(*level))
    }

    /// Age in whole days, if known.
    pub fn age_days(&self) -> Option<u64> {
        self.age.map(|a| a.as_secs() / DAY.as_secs())
    }
}

/// Settings for [`examine`].
pub struct Policy {
    /// Credential rotation period; `None` disables the age check.
    pub rotation: Option<Duration>,
    /// The current time.
    pub now: SystemTime,
}

/// Examines a sealed file: tries every stanza with the matching backend (each
/// unwrap is a real unseal attempt, in memory), authenticates the payload,
/// checks the credential's age and asks the preflights about PCR drift.
///
/// # Errors
/// [`FormatError`] if the bytes are not a sealed file (the caller reports this
/// as CRITICAL).
pub fn examine(
    bytes: &[u8],
    backends: &mut [&mut dyn KeyBackend],
    preflights: &mut [&mut dyn PolicyPreflight],
    policy: &Policy,
) -> Result<FileReport, FormatError> {
    let file = format::parse(bytes)?;
    let mut stanzas = Vec::with_capacity(file.header.stanzas.len());
    let mut document_created: Option<String> = None;
    for (index, stanza) in file.header.stanzas.iter().enumerate() {
        let probe = match backends.iter_mut().find(|b| b.kind() == stanza.kind) {
            None => Probe::NoBackend,
            Some(backend) => match backend.unwrap(stanza) {
                Err(e) => Probe::Failed(e),
                Ok(key) => match envelope::decrypt(&key, &file) {
                    Err(_) => Probe::Tampered,
                    Ok(plaintext) => {
                        if document_created.is_none() {
                            // The plaintext authenticated, so it parses unless
                            // sealed by a broken writer; then only the age
                            // source falls back to the header.
                            document_created = SecretDocument::from_json(&plaintext)
                                .ok()
                                .and_then(|d| d.get("created").map(|v| v.expose().to_owned()));
                        }
                        Probe::Unsealed
                    }
                },
            },
        };
        let pcrs = stanza.field("pcrs").map(str::to_owned);
        let drift = match preflights.iter_mut().find(|p| p.kind() == stanza.kind) {
            Some(p) => p.drift(stanza, &probe),
            None if pcrs.as_deref().is_some_and(|p| p != "none") => Drift::Unknown(format!(
                "this build cannot read {} PCR policies without unsealing",
                stanza.kind
            )),
            None => Drift::NotApplicable,
        };
        stanzas.push(StanzaReport {
            number: index + 1,
            kind: stanza.kind.clone(),
            pcrs,
            probe,
            drift,
        });
    }

    let mut problems = Vec::new();
    let working = stanzas.iter().filter(|s| s.probe.ok()).count();
    for s in &stanzas {
        if matches!(s.probe, Probe::Tampered) {
            problems.push((
                Level::Critical,
                format!("stanza {} ({}): {}", s.number, s.kind, s.probe.describe()),
            ));
        } else if !s.probe.ok() && working > 0 {
            problems.push((
                Level::Warning,
                format!(
                    "stanza {} ({}) cannot unseal: {}",
                    s.number,
                    s.kind,
                    s.probe.describe()
                ),
            ));
        }
        if let Drift::Changed(what) = &s.drift {
            problems.push((
                Level::Warning,
                format!("stanza {} ({}): PCR policy drift: {what}", s.number, s.kind),
            ));
        }
    }
    if working == 0 && !stanzas.iter().any(|s| matches!(s.probe, Probe::Tampered)) {
        let reasons: Vec<String> = stanzas
            .iter()
            .map(|s| format!("stanza {} ({}): {}", s.number, s.kind, s.probe.describe()))
            .collect();
        problems.push((
            Level::Critical,
            format!("no backend can unseal ({})", reasons.join("; ")),
        ));
    }

    let (created, age_source) = match document_created {
        Some(c) if parse_time(&c).is_some() => (c, AgeSource::Document),
        _ => (file.header.created.clone(), AgeSource::Header),
    };
    let age = match parse_time(&created) {
        None => {
            problems.push((
                Level::Warning,
                format!("creation time {created:?} is not a date"),
            ));
            None
        }
        Some(t) => match policy.now.duration_since(t) {
            Ok(age) => Some(age),
            Err(_) => {
                problems.push((
                    Level::Warning,
                    format!("creation time {created} is in the future"),
                ));
                None
            }
        },
    };
    if let (Some(age), Some(rotation)) = (age, policy.rotation) {
        if age > rotation {
            problems.push((
                Level::Warning,
                format!(
                    "credential is {} days old, past the {}-day rotation period",
                    age.as_secs() / DAY.as_secs(),
                    rotation.as_secs() / DAY.as_secs()
                ),
            ));
        }
    }

    Ok(FileReport {
        header: file.header,
        stanzas,
        created,
        age_source,
        age,
        rotation: policy.rotation,
        problems,
    })
}

/// Parses RFC 3339 (`2026-01-02T03:04:05Z`) or a plain date (`2026-01-02`, midnight UTC).
pub fn parse_time(text: &str) -> Option<SystemTime> {
    humantime::parse_rfc3339_weak(text)
        .ok()
        .or_else(|| humantime::parse_rfc3339(&format!("{text}T00:00:00Z")).ok())
}

#[cfg(test)]
mod tests {
    use zeroize::Zeroizing;

    use super::*;
    use crate::envelope::SealOptions;
    use crate::secret::DataKey;

    /// A software backend for unit tests only (XOR with a pad); `refuse`
    /// makes it fail like hardware that says no.
    struct Xor {
        kind: &'static str,
        pad: u8,
        refuse: bool,
    }

    impl KeyBackend for Xor {
        fn kind(&self) -> &'static str {
            self.kind
        }
        fn wrap(&mut self, key: &DataKey) -> Result<Stanza, BackendError> {
            let bytes: Vec<u8> = key.expose().iter().map(|b| b ^ self.pad).collect();
            Ok(Stanza::new(self.kind)
                .with("pcrs", "7")
                .with_bytes("wrapped", &bytes))
        }
        fn unwrap(&mut self, stanza: &Stanza) -> Result<DataKey, BackendError> {
            if self.refuse {
                return Err(BackendError::Refused {
                    backend: self.kind,
                    reason: "PCR 7 changed".into(),
                    hint: String::new(),
                });
            }
            let wrapped =
                stanza
                    .require_bytes("wrapped")
                    .map_err(|source| BackendError::Stanza {
                        backend: self.kind,
                        source,
                    })?;
            let bytes = Zeroizing::new(wrapped.iter().map(|b| b ^ self.pad).collect::<Vec<u8>>());
            Ok(DataKey::from_slice(&bytes).expect("32 bytes"))
        }
    }

    fn seal(doc: &[u8], created: &str, backends: &mut [&mut dyn KeyBackend]) -> Vec<u8> {
        let doc = SecretDocument::parse_input(doc).unwrap();
        let mut options = SealOptions::new(None);
        options.created = created.into();
        envelope::seal(&doc, &options, backends).unwrap()
    }

    fn now() -> SystemTime {
        parse_time("2026-06-01T00:00:00Z").unwrap()
    }

    fn policy() -> Policy {
        Policy {
            rotation: Some(DAY * 90),
            now: now(),
        }
    }

    fn xor(kind: &'static str, refuse: bool) -> Xor {
        Xor {
            kind,
            pad: 5,
            refuse,
        }
    }

    #[test]
    fn healthy_file_is_ok_and_uses_the_document_date() {
        let mut a = xor("a", false);
        let bytes = seal(
            b"username=u\npassword=p\ncreated=2026-05-01T00:00:00Z\n",
            "2026-05-30T00:00:00Z",
            &mut [&mut a],
        );
        let report = examine(&bytes, &mut [&mut a], &mut [], &policy()).unwrap();
        assert_eq!(report.level(), Level::Ok, "{:?}", report.problems);
        assert_eq!(report.age_source, AgeSource::Document);
        assert_eq!(report.age_days(), Some(31));
        assert!(report.stanzas[0].probe.ok());
        assert_eq!(report.stanzas[0].pcrs.as_deref(), Some("7"));
        assert!(matches!(report.stanzas[0].drift, Drift::Unknown(_)));
    }

    #[test]
    fn old_credential_warns_and_header_date_is_the_fallback() {
        let mut a = xor("a", false);
        let bytes = seal(
            b"username=u\npassword=p\n",
            "2026-01-01T00:00:00Z",
            &mut [&mut a],
        );
        let report = examine(&bytes, &mut [&mut a], &mut [], &policy()).unwrap();
        assert_eq!(report.age_source, AgeSource::Header);
        assert_eq!(report.level(), Level::Warning);
        assert!(
            report.problems[0].1.contains("151 days old"),
            "{:?}",
            report.problems
        );
        let relaxed = Policy {
            rotation: None,
            now: now(),
        };
        assert_eq!(
            examine(&bytes, &mut [&mut a], &mut [], &relaxed)
                .unwrap()
                .level(),
            Level::Ok
        );
    }

    #[test]
    fn one_failing_backend_warns_all_failing_is_critical() {
        let mut a = xor("a", false);
        let mut b = xor("b", false);
        let bytes = seal(
            b"username=u\npassword=p\n",
            "2026-05-30T00:00:00Z",
            &mut [&mut a, &mut b],
        );
        let mut refusing = xor("a", true);
        let report = examine(&bytes, &mut [&mut refusing, &mut b], &mut [], &policy()).unwrap();
        assert_eq!(report.level(), Level::Warning);
        assert!(report.problems[0].1.contains("PCR 7 changed"));
        let report = examine(&bytes, &mut [&mut refusing], &mut [], &policy()).unwrap();
        assert_eq!(report.level(), Level::Critical);
        assert!(matches!(report.stanzas[1].probe, Probe::NoBackend));
        assert!(report
            .problems
            .iter()
            .any(|(_, p)| p.starts_with("no backend can unseal")));
    }

    #[test]
    fn tampered_payload_is_critical() {
        let mut a = xor("a", false);
        let mut bytes = seal(
            b"username=u\npassword=p\n",
            "2026-05-30T00:00:00Z",
            &mut [&mut a],
        );
        let last = bytes.len() - 1;
        bytes[last] ^= 1;
        let report = examine(&bytes, &mut [&mut a], &mut [], &policy()).unwrap();
        assert_eq!(report.level(), Level::Critical);
        assert!(matches!(report.stanzas[0].probe, Probe::Tampered));
        assert!(examine(b"not sealed", &mut [&mut a], &mut [], &policy()).is_err());
    }

    #[test]
    fn preflight_hook_reports_drift() {
        struct Drifted;
        impl PolicyPreflight for Drifted {
            fn kind(&self) -> &'static str {
                "a"
            }
            fn drift(&mut self, _stanza: &Stanza, _probe: &Probe) -> Drift {
                Drift::Changed("PCR 7".into())
            }
        }
        let mut a = xor("a", false);
        let bytes = seal(
            b"username=u\npassword=p\n",
            "2026-05-30T00:00:00Z",
            &mut [&mut a],
        );
        let report = examine(&bytes, &mut [&mut a], &mut [&mut Drifted], &policy()).unwrap();
        assert_eq!(report.stanzas[0].drift, Drift::Changed("PCR 7".into()));
        assert_eq!(report.level(), Level::Warning);
    }

    #[test]
    fn levels_combine_worst_first() {
        assert_eq!(Level::Ok.worst(Level::Warning), Level::Warning);
        assert_eq!(Level::Warning.worst(Level::Unknown), Level::Unknown);
        assert_eq!(Level::Critical.worst(Level::Unknown), Level::Critical);
        assert_eq!(parse_time("2026-01-02"), parse_time("2026-01-02T00:00:00Z"));
        assert!(parse_time("yesterday").is_none());
    }
}
