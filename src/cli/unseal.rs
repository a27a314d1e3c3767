//! `sesame unseal`.

use std::io::Write as _;
use std::path::{Path, PathBuf};

use clap::Args;
use sesame::backend::KeyBackend;
use sesame::envelope::{self, UnsealError, Unsealed};
use sesame::format;
use sesame::fsio::{self, WriteOptions};
use sesame::output::{self, OutputFormat, RenderOptions};

use super::audit::{Audit, Outcome};
use super::backends::{self, UnsealBackendArgs};
use super::{CliError, Context};

/// `sesame unseal FILE [--format …] [--output PATH …]`
#[derive(Debug, Args)]
pub struct UnsealArgs {
    /// The sealed file.
    file: PathBuf,
    /// Output format.
    #[arg(long, value_enum, default_value = "json")]
    format: OutputFormat,
    /// For --format value: the field to print.
    #[arg(long, value_name = "NAME")]
    field: Option<String>,
    /// For --format env: prefix for every variable name.
    #[arg(long, value_name = "P", default_value = "")]
    env_prefix: String,
    /// For --format exim: host pattern [default: the `host` field, else *].
    #[arg(long, value_name = "PATTERN")]
    exim_host: Option<String>,
    #[command(flatten)]
    output: OutputArgs,
    #[command(flatten)]
    backends: UnsealBackendArgs,
}

/// Where and how plaintext is written.
#[derive(Debug, Args)]
pub struct OutputArgs {
    /// Write here (atomically) instead of standard output. Must be on tmpfs.
    #[arg(long, value_name = "PATH")]
    pub output: Option<PathBuf>,
    /// Permission bits of --output, octal.
    #[arg(long, value_name = "MODE", default_value = "0600", value_parser = parse_mode, requires = "output")]
    pub mode: u32,
    /// Group owner of --output (name or gid).
    #[arg(long, value_name = "GROUP", requires = "output")]
    pub group: Option<String>,
    /// Replace an existing --output file.
    #[arg(long, requires = "output")]
    pub force: bool,
    /// Allow --output on a persistent (non-tmpfs) file system.
    #[arg(long, requires = "output")]
    pub allow_persistent: bool,
}

fn parse_mode(text: &str) -> Result<u32, String> {
    let mode = u32::from_str_radix(text.trim_start_matches("0o"), 8)
        .map_err(|_| format!("{text:?} is not an octal mode like 0640"))?;
    if mode & !0o777 != 0 {
        return Err(format!(
            "{text:?}: only permission bits (0000–0777) are allowed"
        ));
    }
    if mode & 0o007 != 0 {
        return Err(format!(
            "{text:?}: plaintext must not be readable by others"
        ));
    }
    Ok(mode)
}

impl OutputArgs {
    /// The write options for --output (resolving --group).
    fn write_options(&self) -> Result<WriteOptions, fsio::IoError> {
        Ok(WriteOptions {
            mode: self.mode,
            group: self.group.as_deref().map(fsio::lookup_group).transpose()?,
            force: self.force,
            allow_persistent: self.allow_persistent,
        })
    }

    /// Writes `bytes` to --output or standard output.
    pub fn write(&self, bytes: &[u8]) -> Result<(), CliError> {
        match &self.output {
            Some(path) => {
                let what = format!("write {}", path.display());
                self.write_options()
                    .and_then(|options| fsio::write_atomic(path, bytes, &options))
                    .map_err(|e| CliError::io(&what, e))
            }
            None => {
                let mut stdout = std::io::stdout().lock();
                stdout
                    .write_all(bytes)
                    .and_then(|()| stdout.flush())
                    .map_err(|e| {
                        CliError::new(
                            super::exit::CANTCREAT,
                            "standard output",
                            e.to_string(),
                            None,
                        )
                    })
            }
        }
    }

    /// Checks what can be checked before touching hardware, so a refused
    /// destination costs no unseal.
    pub fn precheck(&self) -> Result<(), CliError> {
        let Some(path) = &self.output else {
            return Ok(());
        };
        self.write_options()
            .and_then(|options| fsio::check_destination(path, &options))
            .map_err(|e| CliError::io(format!("write {}", path.display()), e))
    }
}

pub fn run(ctx: &Context, args: UnsealArgs) -> Result<(), CliError> {
    let render = RenderOptions {
        field: args.field.clone(),
        env_prefix: args.env_prefix.clone(),
        exim_host: args.exim_host.clone(),
    };
    if args.format == OutputFormat::Value && render.field.is_none() {
        return Err(CliError::output(
            "unseal",
            output::OutputError::FieldRequired,
        ));
    }
    args.output.precheck()?;
    let unsealed = unseal_file(ctx, &args.file, &args.backends)?;
    let what = format!("unseal {}", args.file.display());
    let bytes = output::render(&unsealed.document, args.format, &render)
        .map_err(|e| CliError::output(&what, e))?;
    args.output.write(&bytes)
}

/// Reads and unseals `file`, logging one audit event whatever the outcome.
pub fn unseal_file(
    ctx: &Context,
    file: &Path,
    args: &UnsealBackendArgs,
) -> Result<Unsealed, CliError> {
    unseal_file_for(ctx, file, args, "unseal")
}

/// [`unseal_file`] on behalf of another command (`purpose` goes in the audit
/// event, e.g. `ses-check`). Exactly one audit event is emitted on every path,
/// including an unreadable file.
pub fn unseal_file_for(
    ctx: &Context,
    file: &Path,
    args: &UnsealBackendArgs,
    purpose: &'static str,
) -> Result<Unsealed, CliError> {
    let what = format!("unseal {}", file.display());
    let record = Audit {
        file: Some(file),
        ..Audit::new("unseal", purpose)
    };
    let bytes = match fsio::read_bounded(file, format::MAX_FILE_LEN) {
        Ok(b) => b,
        Err(e) => {
            let e = CliError::io(&what, e);
            record.emit_failure(&e);
            return Err(e);
        }
    };
    unseal_bytes_for(ctx, file, &bytes, args, purpose)
}

/// [`unseal_file_for`] of a file already read into `bytes` (by a command that
/// needs the exact bytes it unsealed, e.g. `rewrap`). Exactly one audit event.
pub fn unseal_bytes_for(
    ctx: &Context,
    file: &Path,
    bytes: &[u8],
    args: &UnsealBackendArgs,
    purpose: &'static str,
) -> Result<Unsealed, CliError> {
    let what = format!("unseal {}", file.display());
    let mut record = Audit {
        file: Some(file),
        ..Audit::new("unseal", purpose)
    };
    let sealed = match format::parse(bytes) {
        Ok(f) => f,
        Err(e) => {
            let e = CliError::unseal(&what, e.into());
            record.emit_failure(&e);
            return Err(e);
        }
    };
    let kinds = sealed.header.kinds();
    record.backend = Some(&kinds);
    record.generation = Some(sealed.header.generation);
    let mut backends = match backends::for_unsealing(ctx, args) {
        Ok(b) => b,
        Err(e) => {
            record.emit_failure(&e);
            return Err(e);
        }
    };
    let mut refs: Vec<&mut dyn KeyBackend> = backends.iter_mut().map(|b| b.as_mut() as _).collect();
    let result = envelope::unseal_parsed(&sealed, &mut refs);
    match &result {
        Ok(u) => {
            for (index, kind, reason) in &u.notes {
                tracing::info!(file = %file.display(), stanza = index + 1, backend = %kind, %reason, "stanza skipped");
            }
            let stanza = &u.header.stanzas[u.stanza_index];
            Audit {
                backend: Some(&stanza.kind),
                pcrs: stanza.field("pcrs"),
                outcome: Outcome::Ok,
                ..record
            }
            .emit();
        }
        Err(e) => {
            // Name the backend that failed and the PCRs its stanza is bound to.
            if let UnsealError::Backend(b) = e {
                let stanza = sealed.header.stanzas.iter().find(|s| s.kind == b.backend());
                record.backend = Some(b.backend());
                record.pcrs = stanza.and_then(|s| s.field("pcrs"));
            }
            record.emit_failure(e);
        }
    }
    result.map_err(|e| CliError::unseal(what, e))
}
