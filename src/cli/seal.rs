//! `sesame seal`.

use std::io::{IsTerminal as _, Read as _};
use std::path::PathBuf;

use clap::Args;
use sesame::envelope::{self, SealOptions};
use sesame::format;
use sesame::fsio::{self, WriteOptions};
use sesame::secret::{FieldName, SecretDocument, SecretValue};
use zeroize::Zeroizing;

use super::backends::{self, SealBackendArgs};
use super::{CliError, Context};

/// `sesame seal --out FILE [backend options…] < secret`
#[derive(Debug, Args)]
pub struct SealArgs {
    /// Where to write the sealed file (atomically; mode 0600).
    #[arg(long, value_name = "FILE")]
    out: PathBuf,
    /// Replace an existing file (its generation counter is carried on, +1).
    #[arg(long)]
    force: bool,
    /// A name or purpose stored in clear in the header.
    #[arg(long)]
    name: Option<String>,
    #[command(flatten)]
    backends: SealBackendArgs,
    #[command(flatten)]
    ses: super::ses::SesSealArgs,
}

pub fn run(ctx: &Context, args: SealArgs) -> Result<(), CliError> {
    let result = seal(ctx, &args);
    // Success is audited inside, with the backends used; a failure here.
    if let Err(e) = &result {
        super::audit::Audit {
            file: Some(&args.out),
            ..super::audit::Audit::new("seal", "seal")
        }
        .emit_failure(e);
    }
    result
}

fn seal(ctx: &Context, args: &SealArgs) -> Result<(), CliError> {
    let what = format!("seal {}", args.out.display());
    // Fail before reading any secret or touching hardware.
    if !args.force {
        let options = WriteOptions {
            mode: 0o600,
            group: None,
            force: false,
            allow_persistent: true,
        };
        fsio::check_destination(&args.out, &options).map_err(|e| CliError::io(&what, e))?;
    }
    if let Some(name) = &args.name {
        format::check_name(name).map_err(|e| CliError::seal(&what, e.into()))?;
    }
    let mut options = SealOptions::new(args.name.clone());
    // Replacing keeps the file's place (a symlink stays a link), permission
    // bits and group, and carries its generation on.
    let (target, write) = match fsio::options_to_replace(&args.out) {
        Ok(replace) if args.force => {
            options.generation = previous_generation(&replace.0).map_or(1, |g| g.saturating_add(1));
            replace
        }
        _ => (
            args.out.clone(),
            WriteOptions {
                mode: 0o600,
                group: None,
                force: args.force,
                // The sealed file is ciphertext: it belongs on persistent disk.
                allow_persistent: true,
            },
        ),
    };
    let mut backends = backends::for_sealing(ctx, &args.backends, &what)?;
    let document = read_secret(args.ses.prompt_fields()).map_err(|e| e.with_what(&what))?;
    let document = args
        .ses
        .finish(document, &options.created)
        .map_err(|e| e.with_what(&what))?;
    let mut refs: Vec<&mut dyn sesame::backend::KeyBackend> =
        backends.iter_mut().map(|b| b.as_mut() as _).collect();
    let sealed =
        envelope::seal(&document, &options, &mut refs).map_err(|e| CliError::seal(&what, e))?;
    fsio::write_atomic(&target, &sealed, &write).map_err(|e| CliError::io(&what, e))?;
    let kinds = backends::kinds(&backends);
    let pcrs = args
        .backends
        .tpm2_pcrs
        .clone()
        .or_else(|| ctx.config.tpm2_pcrs.clone());
    super::audit::Audit {
        file: Some(&args.out),
        backend: Some(&kinds),
        pcrs: pcrs.as_deref().filter(|_| args.backends.tpm2),
        generation: Some(options.generation),
        outcome: super::audit::Outcome::Ok,
        ..super::audit::Audit::new("seal", "seal")
    }
    .emit();
    Ok(())
}

fn previous_generation(path: &std::path::Path) -> Option<u64> {
    let bytes = fsio::read_bounded(path, format::MAX_FILE_LEN).ok()?;
    format::parse_header_only(&bytes).ok().map(|h| h.generation)
}

/// Reads the secret: prompts for `prompt_fields` on a terminal, else parses
/// standard input.
pub(super) fn read_secret(prompt_fields: [&str; 2]) -> Result<SecretDocument, CliError> {
    let stdin = std::io::stdin();
    if stdin.is_terminal() {
        return prompt_secret(prompt_fields);
    }
    // Sized for the limit up front: a growing Vec would leave unwiped copies.
    let mut input = Zeroizing::new(Vec::with_capacity(SecretDocument::MAX_INPUT + 1));
    stdin
        .lock()
        .take(SecretDocument::MAX_INPUT as u64 + 1)
        .read_to_end(&mut input)
        .map_err(|e| CliError::new(super::exit::NOINPUT, "standard input", e.to_string(), None))?;
    SecretDocument::parse_input(&input).map_err(|e| CliError::document("standard input", e))
}

fn prompt_secret(fields: [&str; 2]) -> Result<SecretDocument, CliError> {
    let mut doc = SecretDocument::new();
    for name in fields {
        let value = rpassword::prompt_password(format!("{name}: "))
            .map_err(|e| CliError::new(super::exit::NOINPUT, "terminal", e.to_string(), None))?;
        let value = SecretValue::new(value);
        if value.expose().is_empty() {
            return Err(CliError::usage("terminal", format!("empty {name}"), None));
        }
        // Invariant: both names are valid and distinct (fixed by the callers).
        doc.insert(FieldName::new(name).expect("valid name"), value)
            .expect("distinct names");
    }
    Ok(doc)
}

impl CliError {
    pub(super) fn with_what(mut self, what: &str) -> Self {
        self.what = format!("{what}: {}", self.what);
        self
    }
}
