//! Command-line parsing, dispatch, logging set-up and the mapping of every
//! library error to a one-line message and a sysexits code.

mod audit;
mod backends;
mod exec;
mod inspect;
mod pkcs11;
mod rewrap;
mod seal;
mod ses;
mod status;
mod systemd;
mod tpm2;
mod unseal;

use std::fmt;
use std::path::PathBuf;

use clap::{Parser, Subcommand, ValueEnum};
use sesame::backend::BackendError;
use sesame::config::{Config, ConfigError};
use sesame::envelope::{SealError, UnsealError};
use sesame::format::FormatError;
use sesame::fsio::IoError;
use sesame::output::OutputError;
use sesame::pin::PinError;
use sesame::secret::DocumentError;

/// Exit codes (sysexits.h), as documented in README and CONTRACT.md.
pub mod exit {
    /// Bad flags or arguments.
    pub const USAGE: u8 = 64;
    /// Sealed file malformed, tampered or of an unknown version; bad secret input.
    pub const DATAERR: u8 = 65;
    /// Input file missing or unreadable.
    pub const NOINPUT: u8 = 66;
    /// Backend unavailable.
    pub const UNAVAILABLE: u8 = 69;
    /// Internal error (a bug, or the process could not be hardened).
    pub const SOFTWARE: u8 = 70;
    /// Cannot create the output.
    pub const CANTCREAT: u8 = 73;
    /// Temporary failure worth retrying.
    pub const TEMPFAIL: u8 = 75;
    /// The hardware refused.
    pub const NOPERM: u8 = 77;
    /// Configuration error.
    pub const CONFIG: u8 = 78;
}

/// Seal secrets to this machine's TPM 2.0 or PKCS#11 HSM.
///
/// Exit codes: 0 ok, 64 usage, 65 malformed/tampered file or bad secret input,
/// 66 input missing, 69 backend unavailable, 70 internal error, 73 cannot
/// create output, 75 temporary failure (retry), 77 hardware refused,
/// 78 configuration error. `ses check` adds 76 (TLS or SMTP protocol failure)
/// and uses 69/77 for an unreachable endpoint / refused credentials; `status`
/// uses 0-3 (Nagios); `exec` returns its command's code, 126/127 if it cannot run.
#[derive(Debug, Parser)]
#[command(name = "sesame", version, max_term_width = 100)]
pub struct Cli {
    /// More logging on stderr (-v info, -vv debug, -vvv trace). Secrets are never logged.
    #[arg(short, long, action = clap::ArgAction::Count, global = true)]
    verbose: u8,
    /// Log format on stderr.
    #[arg(long, value_enum, global = true, value_name = "FORMAT")]
    log_format: Option<LogFormat>,
    /// Settings file [default: /etc/sesame/sesame.toml if present].
    #[arg(long, global = true, env = "SESAME_CONFIG", value_name = "PATH")]
    config: Option<PathBuf>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
enum LogFormat {
    /// Human-readable lines (journald-friendly: no colours, no timestamps).
    Text,
    /// One JSON object per event.
    Json,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Seal a secret read from standard input into a new sealed file.
    Seal(seal::SealArgs),
    /// Unseal a file with whichever of its backends is present here.
    Unseal(unseal::UnsealArgs),
    /// Show a sealed file's header (backends, PCRs, dates) without hardware.
    Inspect(inspect::InspectArgs),
    /// Re-seal a file's secret, unchanged, to a new set of backends.
    ///
    /// Unseals FILE with any stanza that works here (the unseal options), then
    /// replaces it atomically with the same secret under a fresh data key,
    /// wrapped by the backends given (--tpm2, --pkcs11 URI) plus, with --keep,
    /// the existing stanzas' backends re-sealed. Old stanzas cannot open the
    /// new file, so dropping a backend really removes it. Uses: enrol a new
    /// machine's TPM with the HSM stanza (`rewrap FILE --keep=pkcs11 --tpm2`),
    /// re-seal after a PCR change, add or remove an HSM key.
    ///
    /// The header's generation is incremented; `created` and `name` are kept
    /// (`created` is when the secret was sealed, so `status` does not see a
    /// re-wrapped credential as new). Exit codes as for seal and unseal; 75 if
    /// FILE changed while being re-sealed. The old file is untouched on any
    /// failure.
    Rewrap(rewrap::RewrapArgs),
    /// Replace a file's secret with a new one read from standard input,
    /// sealed to the same backends.
    ///
    /// Reads the new secret as `seal` does (JSON, KEY=VALUE lines, a terminal
    /// prompt, or --ses input), and replaces FILE atomically with a fresh data
    /// key wrapped by the backends of the existing stanzas: PKCS#11 keys at
    /// their recorded URIs, this TPM (--tpm2-device) with the recorded PCR
    /// selection, against the PCR values now. By default FILE is unsealed
    /// first, to prove this is the right machine; --no-verify skips that
    /// (after a planned PCR change). Generation + 1, `created` now, `name`
    /// kept. Check new SES credentials first with `sesame ses check --stdin`.
    /// Exit codes as for seal and unseal; 75 if FILE changed meanwhile. The
    /// old file is untouched on any failure.
    Rotate(rewrap::RotateArgs),
    /// AWS SES tools: derive the SMTP password, check sealed credentials live.
    Ses(ses::SesArgs),
    /// Health of sealed files for monitoring: can each backend unseal now,
    /// credential age against the rotation period, TPM PCR drift.
    ///
    /// Exit codes (Nagios plugin convention): 0 OK; 1 WARNING (credential
    /// older than the rotation period, a backend that cannot unseal while
    /// another can, PCR drift); 2 CRITICAL (no backend can unseal, file
    /// unreadable, malformed or tampered); 3 UNKNOWN (no sealed files found,
    /// bad backend options). Command-line syntax errors exit 64, which
    /// monitoring agents also treat as UNKNOWN.
    Status(status::StatusArgs),
    /// Unseal, then run COMMAND with the fields in its environment (never on argv).
    Exec(exec::ExecArgs),
    /// Boot-time unsealing: install the systemd unit, or run its unseal step.
    Systemd(systemd::SystemdArgs),
    /// PKCS#11 token tools (create a key to seal to).
    #[command(subcommand)]
    Pkcs11(pkcs11::Pkcs11Command),
    /// TPM 2.0 administration: info, persist-srk.
    Tpm2(tpm2::Tpm2Args),
}

/// Shared state for commands: the loaded config.
pub struct Context {
    config: Config,
}

/// Runs the parsed command.
///
/// # Errors
/// A [`CliError`] carrying the message and exit code.
pub fn run(cli: Cli) -> Result<(), CliError> {
    let config = Config::load(cli.config.as_deref()).map_err(CliError::config)?;
    let log_format = match (cli.log_format, config.log_format.as_deref()) {
        (Some(f), _) => f,
        (None, Some("json")) => LogFormat::Json,
        (None, Some("text") | None) => LogFormat::Text,
        (None, Some(other)) => {
            return Err(CliError::new(
                exit::CONFIG,
                "configuration",
                format!("log_format = {other:?} is not text or json"),
                Some("fix the settings file"),
            ))
        }
    };
    init_logging(cli.verbose, log_format);
    let ctx = Context { config };
    match cli.command {
        Command::Seal(args) => seal::run(&ctx, args),
        Command::Unseal(args) => unseal::run(&ctx, args),
        Command::Inspect(args) => inspect::run(&ctx, args),
        Command::Rewrap(args) => rewrap::run_rewrap(&ctx, args),
        Command::Rotate(args) => rewrap::run_rotate(&ctx, args),
        Command::Ses(args) => ses::run(&ctx, args),
        Command::Status(args) => status::run(&ctx, args),
        Command::Exec(args) => exec::run(&ctx, args),
        Command::Systemd(args) => systemd::run(&ctx, args),
        Command::Pkcs11(cmd) => pkcs11::run(&ctx, cmd),
        Command::Tpm2(args) => tpm2::run(&ctx, args),
    }
}

/// Sets up stderr logging. Audit events (target `sesame::audit`, level INFO)
/// are always on in JSON mode, where a collector wants every one of them; in
/// text mode they appear from `-v` on, so that at default verbosity a failure
/// is reported once, by the one-line error, not twice.
fn init_logging(verbose: u8, format: LogFormat) {
    use tracing_subscriber::filter::{LevelFilter, Targets};
    use tracing_subscriber::prelude::*;

    let level = match verbose {
        0 => LevelFilter::WARN,
        1 => LevelFilter::INFO,
        2 => LevelFilter::DEBUG,
        _ => LevelFilter::TRACE,
    };
    let audit_level = match format {
        // More verbose levels compare greater.
        LogFormat::Json => level.max(LevelFilter::INFO),
        LogFormat::Text => level,
    };
    // tss-esapi logs every refused TPM command at ERROR through `log`, which
    // duplicates our one-line error; show it only at -vvv (it logs response
    // codes and handle numbers, never data).
    let tss_level = if verbose >= 3 {
        LevelFilter::TRACE
    } else {
        LevelFilter::OFF
    };
    let filter = Targets::new()
        .with_default(level)
        .with_target(audit::TARGET, audit_level)
        .with_target("tss_esapi", tss_level);
    let layer = tracing_subscriber::fmt::layer()
        .with_writer(std::io::stderr)
        .with_ansi(false)
        .with_target(true);
    // Ignore "already set": only possible if called twice, which run() does not.
    let _ = match format {
        LogFormat::Text => tracing_subscriber::registry()
            .with(layer.without_time().with_filter(filter))
            .try_init(),
        LogFormat::Json => tracing_subscriber::registry()
            .with(layer.json().flatten_event(true).with_filter(filter))
            .try_init(),
    };
}

/// A failure ready for the user: `<what failed>: <why> (<what to do>)` and an
/// exit code. Built only from error types whose messages never hold secrets.
#[derive(Debug)]
pub struct CliError {
    /// Process exit code.
    pub code: u8,
    what: String,
    why: String,
    hint: Option<String>,
}

impl fmt::Display for CliError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // One line, always: flatten anything multi-line a lower layer produced.
        let why = self.why.replace(['\n', '\r'], " ");
        write!(f, "{}: {}", self.what, why)?;
        if let Some(hint) = &self.hint {
            write!(f, " ({hint})")?;
        }
        Ok(())
    }
}

impl CliError {
    /// An exit code with nothing more to say on stderr: the command already
    /// reported (e.g. `status`, whose report on stdout is the message).
    pub fn silent(code: u8) -> Self {
        Self::new(code, "", "", None)
    }

    /// True for [`CliError::silent`] errors.
    pub fn is_silent(&self) -> bool {
        self.what.is_empty() && self.why.is_empty()
    }

    /// A new error.
    pub fn new(
        code: u8,
        what: impl Into<String>,
        why: impl Into<String>,
        hint: Option<&str>,
    ) -> Self {
        Self {
            code,
            what: what.into(),
            why: why.into(),
            hint: hint.map(str::to_owned),
        }
    }

    fn config(e: ConfigError) -> Self {
        Self::new(
            exit::CONFIG,
            "configuration",
            e.to_string(),
            Some("fix or remove the settings file"),
        )
    }

    /// A backend failure while doing `what`.
    pub fn backend(what: impl Into<String>, e: BackendError) -> Self {
        let code = match e {
            BackendError::Unavailable { .. } => exit::UNAVAILABLE,
            BackendError::Busy { .. } => exit::TEMPFAIL,
            BackendError::Refused { .. } | BackendError::StateChanged { .. } => exit::NOPERM,
            BackendError::Stanza { .. } => exit::DATAERR,
            BackendError::Config { .. } => exit::CONFIG,
            BackendError::Exists { .. } => exit::CANTCREAT,
            _ => exit::SOFTWARE,
        };
        let hint = e.hint().map(str::to_owned);
        Self {
            code,
            what: what.into(),
            why: e.to_string(),
            hint,
        }
    }

    /// An unseal failure of `file`.
    pub fn unseal(what: impl Into<String>, e: UnsealError) -> Self {
        let what = what.into();
        match e {
            UnsealError::Backend(b) => Self::backend(what, b),
            UnsealError::Format(f) => Self::new(
                exit::DATAERR,
                what,
                f.to_string(),
                Some("the file is damaged or not a sealed file; restore it from backup or seal again"),
            ),
            UnsealError::NoUsableStanza { .. } => Self::new(
                exit::UNAVAILABLE,
                what,
                e.to_string(),
                Some("unseal on a machine with one of the listed backends, or upgrade sesame"),
            ),
            UnsealError::Tampered { .. } | UnsealError::Payload(_) => Self::new(
                exit::DATAERR,
                what,
                e.to_string(),
                Some("do not trust this file; restore it from backup or seal again"),
            ),
            _ => Self::new(exit::SOFTWARE, what, e.to_string(), None),
        }
    }

    /// A sealing failure.
    pub fn seal(what: impl Into<String>, e: SealError) -> Self {
        let what = what.into();
        match e {
            SealError::Backend(b) => Self::backend(what, b),
            SealError::NoBackend => Self::new(exit::USAGE, what, e.to_string(), None),
            SealError::Format(ref f) => {
                let hint = match f {
                    FormatError::InvalidValue { field, .. } if field == "name" => {
                        Some("use printable ASCII for --name")
                    }
                    _ => None,
                };
                Self::new(exit::USAGE, what, e.to_string(), hint)
            }
            SealError::Generation(_) => Self::new(
                exit::DATAERR,
                what,
                e.to_string(),
                Some("seal a new file instead"),
            ),
            _ => Self::new(exit::SOFTWARE, what, e.to_string(), None),
        }
    }

    /// A file-system failure.
    pub fn io(what: impl Into<String>, e: IoError) -> Self {
        let (code, hint) = match &e {
            IoError::Read { .. } => (exit::NOINPUT, "check the path and permissions"),
            IoError::Exists { .. } => (exit::CANTCREAT, "remove it first or pass --force"),
            IoError::NotTmpfs { .. } => (
                exit::CANTCREAT,
                "write under /run/sesame or another tmpfs, or pass --allow-persistent",
            ),
            IoError::Write { .. } => (
                exit::CANTCREAT,
                "check the directory exists and is writable",
            ),
            IoError::NoSuchGroup(_) => (exit::USAGE, "create the group or use its numeric id"),
            _ => (exit::SOFTWARE, ""),
        };
        // Name the file once: in `what` when it is already there, else in `why`.
        let what = what.into();
        let why = match e.path() {
            Some(p) if what.contains(&*p.to_string_lossy()) => e.detail(),
            _ => e.to_string(),
        };
        Self::new(code, what, why, Some(hint).filter(|h| !h.is_empty()))
    }

    /// Bad secret input.
    pub fn document(what: impl Into<String>, e: DocumentError) -> Self {
        Self::new(
            exit::DATAERR,
            what,
            e.to_string(),
            Some("give a JSON object of strings or KEY=VALUE lines on standard input"),
        )
    }

    /// A document that cannot be written in the requested format.
    pub fn output(what: impl Into<String>, e: OutputError) -> Self {
        let code = match e {
            OutputError::FieldRequired
            | OutputError::BadPrefix(_)
            | OutputError::NoSuchField { .. } => exit::USAGE,
            _ => exit::DATAERR,
        };
        let hint = match e {
            OutputError::Unrepresentable { .. } => {
                Some("use --format json or value for this secret")
            }
            _ => None,
        };
        Self::new(code, what, e.to_string(), hint)
    }

    /// A PIN problem.
    pub fn pin(what: impl Into<String>, e: PinError) -> Self {
        Self::new(exit::CONFIG, what, e.to_string(), None)
    }

    /// A usage problem the parser could not catch.
    pub fn usage(what: impl Into<String>, why: impl Into<String>, hint: Option<&str>) -> Self {
        Self::new(exit::USAGE, what, why, hint)
    }
}
