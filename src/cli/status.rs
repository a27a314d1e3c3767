//! `sesame status`: health of sealed files, Nagios-style.

use std::path::{Path, PathBuf};
use std::time::SystemTime;

use clap::Args;
use serde_json::{json, Value};
use sesame::backend::{tpm2, KeyBackend};
use sesame::format::{self, Stanza};
use sesame::fsio;
use sesame::status::{
    self, Drift, FileReport, Level, Policy, PolicyPreflight, Probe, DAY, DEFAULT_ROTATION_DAYS,
};

use super::audit::{Audit, Outcome};
use super::backends::{self, UnsealBackendArgs};
use super::{CliError, Context};

/// Where `status` looks when no file is given.
pub const DEFAULT_DIR: &str = "/etc/sesame";

/// `sesame status [FILE…] [--json] [--rotation-days N]` (exit codes: see the
/// `Status` command's help in `cli/mod.rs` and docs/status.md).
#[derive(Debug, Args)]
pub struct StatusArgs {
    /// Sealed files [default: /etc/sesame/*.sealed].
    #[arg(value_name = "FILE")]
    files: Vec<PathBuf>,
    /// Print JSON instead of text.
    #[arg(long)]
    json: bool,
    /// Rotation period in days; 0 disables the age check [default: the
    /// `rotation_days` setting, else 90].
    #[arg(long, value_name = "DAYS")]
    rotation_days: Option<u64>,
    #[command(flatten)]
    backends: UnsealBackendArgs,
}

/// One file's outcome: a report, or why there is none.
enum Entry {
    Report(Box<FileReport>),
    Broken(String),
}

impl Entry {
    fn level(&self) -> Level {
        match self {
            Self::Report(r) => r.level(),
            Self::Broken(_) => Level::Critical,
        }
    }
}

/// PCR drift of TPM stanzas. The unseal `status` just attempted usually
/// settles it: a released key means the policy held, and the backend's PCR
/// refusal names the changed PCRs. Only after another failure (or no attempt)
/// does this ask the TPM again, reading the current PCR values and comparing
/// them with the sealed ones, without unsealing.
struct Tpm2Preflight {
    device: String,
}

impl PolicyPreflight for Tpm2Preflight {
    fn kind(&self) -> &'static str {
        tpm2::KIND
    }

    fn drift(&mut self, stanza: &Stanza, probe: &Probe) -> Drift {
        if stanza.field("pcrs") == Some("none") {
            return Drift::NotApplicable;
        }
        match probe {
            // The TPM released the key (Tampered: it did, but the payload
            // did not open): the PCR policy held a moment ago.
            Probe::Unsealed | Probe::Tampered => return Drift::Unchanged,
            Probe::Failed(e) => {
                if let Some(which) = tpm2::pcr_drift(e) {
                    return Drift::Changed(which.to_owned());
                }
            }
            Probe::NoBackend => {}
        }
        let report = tpm2::binding(stanza).and_then(|b| tpm2::preflight(&b, &self.device));
        match report {
            Err(e) => Drift::Unknown(e.to_string()),
            Ok(report) if !report.same_tpm => Drift::Unknown(format!(
                "{} is not the TPM this was sealed to",
                report.device
            )),
            Ok(report) => {
                let changed = report.changed();
                if changed.is_empty() {
                    Drift::Unchanged
                } else {
                    let list: Vec<String> = changed.iter().map(u8::to_string).collect();
                    let bank = report.bank.map(|b| b.to_string()).unwrap_or_default();
                    Drift::Changed(format!(
                        "{bank} PCR {} changed since sealing",
                        list.join(",")
                    ))
                }
            }
        }
    }
}

pub fn run(ctx: &Context, args: StatusArgs) -> Result<(), CliError> {
    let unknown = |why: String| {
        println!("SESAME UNKNOWN - {why}");
        CliError::new(Level::Unknown.code(), "status", why, None)
    };
    let files = if args.files.is_empty() {
        default_files(Path::new(DEFAULT_DIR))
    } else {
        args.files.clone()
    };
    if files.is_empty() {
        return Err(unknown(format!(
            "no sealed files (*.sealed) in {DEFAULT_DIR}"
        )));
    }
    let rotation_days = args
        .rotation_days
        .or(ctx.config.rotation_days)
        .unwrap_or(DEFAULT_ROTATION_DAYS);
    let policy = Policy {
        rotation: (rotation_days > 0)
            .then(|| DAY * u32::try_from(rotation_days).unwrap_or(u32::MAX)),
        now: SystemTime::now(),
    };
    let mut backends =
        backends::for_unsealing(ctx, &args.backends).map_err(|e| unknown(e.to_string()))?;
    let mut refs: Vec<&mut dyn KeyBackend> = backends.iter_mut().map(|b| b.as_mut() as _).collect();
    let mut tpm2 = Tpm2Preflight {
        device: args.backends.tpm2_device.resolve(ctx),
    };
    let mut preflights: Vec<&mut dyn PolicyPreflight> = vec![&mut tpm2];

    let mut entries = Vec::with_capacity(files.len());
    for file in &files {
        let entry = match fsio::read_bounded(file, format::MAX_FILE_LEN) {
            Err(e) => Entry::Broken(format!("cannot read: {e}")),
            Ok(bytes) => match status::examine(&bytes, &mut refs, &mut preflights, &policy) {
                Err(e) => Entry::Broken(format!("not a valid sealed file: {e}")),
                Ok(report) => {
                    audit_probes(file, &report);
                    Entry::Report(Box::new(report))
                }
            },
        };
        entries.push((file.clone(), entry));
    }

    let level = entries
        .iter()
        .fold(Level::Ok, |acc, (_, e)| acc.worst(e.level()));
    if args.json {
        println!("{}", to_json(level, rotation_days, &entries));
    } else {
        print!("{}", to_text(level, rotation_days, &entries));
    }
    match level {
        Level::Ok => Ok(()),
        other => Err(CliError::silent(other.code())),
    }
}

/// `DIR/*.sealed`, sorted; nothing if the directory cannot be read.
fn default_files(dir: &Path) -> Vec<PathBuf> {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return Vec::new();
    };
    let mut files: Vec<PathBuf> = entries
        .filter_map(Result::ok)
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|x| x == "sealed"))
        .collect();
    files.sort();
    files
}

/// One audit event per unwrap attempted (stanzas without a backend here were
/// not attempted and are not audited).
fn audit_probes(file: &Path, report: &FileReport) {
    for s in &report.stanzas {
        let (outcome, reason) = match &s.probe {
            Probe::NoBackend => continue,
            Probe::Unsealed => (Outcome::Ok, None),
            other => (Outcome::Failed, Some(other.describe())),
        };
        Audit {
            file: Some(file),
            backend: Some(&s.kind),
            pcrs: s.pcrs.as_deref(),
            generation: Some(report.header.generation),
            outcome,
            reason: reason.as_deref(),
            ..Audit::new("probe", "status")
        }
        .emit();
    }
}

fn summary(level: Level, entries: &[(PathBuf, Entry)]) -> String {
    if level == Level::Ok {
        let n = entries.len();
        return format!("{n} sealed file{} OK", if n == 1 { "" } else { "s" });
    }
    let mut parts = Vec::new();
    for (path, entry) in entries {
        match entry {
            Entry::Broken(why) => parts.push(format!("{}: {why}", path.display())),
            Entry::Report(r) => {
                for (l, p) in &r.problems {
                    if *l != Level::Ok {
                        parts.push(format!("{}: {p}", path.display()));
                    }
                }
            }
        }
    }
    parts.join("; ")
}

fn to_text(level: Level, rotation_days: u64, entries: &[(PathBuf, Entry)]) -> String {
    let mut out = format!("SESAME {level} - {}\n", summary(level, entries));
    for (path, entry) in entries {
        out.push_str(&format!("{}: {}\n", path.display(), entry.level()));
        match entry {
            Entry::Broken(why) => out.push_str(&format!("  CRITICAL: {why}\n")),
            Entry::Report(r) => {
                let age = r
                    .age_days()
                    .map_or_else(|| "age unknown".to_owned(), |d| format!("{d} days old"));
                let rotation = if rotation_days == 0 {
                    "no rotation period".to_owned()
                } else {
                    format!("rotation period {rotation_days} days")
                };
                out.push_str(&format!(
                    "  created {} (from the {}), {age}, {rotation}\n",
                    r.created,
                    r.age_source.word()
                ));
                out.push_str(&format!("  generation {}", r.header.generation));
                if let Some(name) = &r.header.name {
                    out.push_str(&format!(", name {name}"));
                }
                out.push('\n');
                for s in &r.stanzas {
                    out.push_str(&format!("  stanza {} {}", s.number, s.kind));
                    if let Some(p) = &s.pcrs {
                        out.push_str(&format!(" (pcrs {p})"));
                    }
                    out.push_str(&format!(
                        ": can unseal: {}",
                        if s.probe.ok() {
                            "yes".to_owned()
                        } else {
                            format!("no ({})", s.probe.describe())
                        }
                    ));
                    out.push_str(&format!("; PCR drift: {}", s.drift.word()));
                    if let Some(d) = s.drift.detail() {
                        out.push_str(&format!(" ({d})"));
                    }
                    out.push('\n');
                }
                for (l, p) in &r.problems {
                    out.push_str(&format!("  {l}: {p}\n"));
                }
            }
        }
    }
    out
}

fn to_json(level: Level, rotation_days: u64, entries: &[(PathBuf, Entry)]) -> Value {
    let files: Vec<Value> = entries
        .iter()
        .map(|(path, entry)| match entry {
            Entry::Broken(why) => json!({
                "file": path.display().to_string(),
                "status": Level::Critical.name(),
                "problems": [{ "level": Level::Critical.name(), "message": why }],
                "stanzas": [],
            }),
            Entry::Report(r) => {
                let stanzas: Vec<Value> = r
                    .stanzas
                    .iter()
                    .map(|s| {
                        json!({
                            "number": s.number,
                            "type": s.kind,
                            "pcrs": s.pcrs,
                            "can_unseal": s.probe.ok(),
                            "reason": (!s.probe.ok()).then(|| s.probe.describe()),
                            "pcr_drift": s.drift.word(),
                            "pcr_drift_detail": s.drift.detail(),
                        })
                    })
                    .collect();
                let problems: Vec<Value> = r
                    .problems
                    .iter()
                    .map(|(l, p)| json!({ "level": l.name(), "message": p }))
                    .collect();
                json!({
                    "file": path.display().to_string(),
                    "status": r.level().name(),
                    "created": r.created,
                    "age_source": r.age_source.word(),
                    "age_days": r.age_days(),
                    "generation": r.header.generation,
                    "name": r.header.name,
                    "stanzas": stanzas,
                    "problems": problems,
                })
            }
        })
        .collect();
    json!({
        "status": level.name(),
        "code": level.code(),
        "rotation_days": rotation_days,
        "files": files,
    })
}
