//! `sesame exec FILE -- COMMAND…`: unseal, then become COMMAND with the
//! fields in its environment.

use std::ffi::OsString;
use std::io;
use std::os::unix::process::CommandExt as _;
use std::path::PathBuf;
use std::process::Command;

use clap::Args;
use sesame::backend::tpm2;
use sesame::output;

use super::backends::UnsealBackendArgs;
use super::unseal::unseal_file;
use super::{CliError, Context};

/// Exit code when COMMAND cannot be found (as env(1) and shells do).
const EXIT_NOT_FOUND: u8 = 127;
/// Exit code when COMMAND exists but cannot be executed.
const EXIT_CANNOT_EXEC: u8 = 126;

/// `sesame exec FILE [--env-prefix P] -- COMMAND [ARGS…]`
#[derive(Debug, Args)]
#[command(
    after_help = "The fields become environment variables named like `unseal --format env` \
    names them (upper-cased, with --env-prefix). Values never appear on any command line. \
    sesame replaces itself with COMMAND (same PID), so COMMAND's exit status is the exit status; \
    if unsealing fails, sesame's own codes apply, and 127/126 if COMMAND is missing or not executable. \
    COMMAND inherits sesame's disabled core dumps (RLIMIT_CORE=0)."
)]
pub struct ExecArgs {
    /// The sealed file.
    file: PathBuf,
    /// Prefix for every variable name, e.g. SES_.
    #[arg(long, value_name = "P", default_value = "")]
    env_prefix: String,
    #[command(flatten)]
    backends: UnsealBackendArgs,
    /// The command and its arguments, after `--`.
    #[arg(last = true, required = true, value_name = "COMMAND")]
    command: Vec<OsString>,
}

pub fn run(ctx: &Context, args: ExecArgs) -> Result<(), CliError> {
    // A bad prefix is a usage error: catch it before touching the hardware.
    output::check_prefix(&args.env_prefix).map_err(|e| CliError::output("exec", e))?;
    let Some((program, rest)) = args.command.split_first() else {
        // clap enforces `required = true`; kept as an error, not a panic.
        return Err(CliError::usage(
            "exec",
            "no COMMAND given",
            Some("add -- COMMAND"),
        ));
    };
    let unsealed = unseal_file(ctx, &args.file, &args.backends)?;
    let what = format!("exec {}", program.to_string_lossy());
    let pairs = output::env_pairs(&unsealed.document, &args.env_prefix)
        .map_err(|e| CliError::output(&what, e))?;
    let mut command = Command::new(program);
    command.args(rest);
    // The TPM backend quiets libtss2 by setting TSS2_LOG when the caller had
    // none; that is sesame's business, not COMMAND's (which may use the TSS).
    if tpm2::tss_log_was_set_by_us() {
        command.env_remove("TSS2_LOG");
    }
    for (name, value) in pairs {
        command.env(name, value);
    }
    // exec() returns only if the process could not be replaced.
    let error = command.exec();
    let code = match error.kind() {
        io::ErrorKind::NotFound => EXIT_NOT_FOUND,
        _ => EXIT_CANNOT_EXEC,
    };
    // The OS error names the program, never a value (values are not on argv).
    let why = match error.kind() {
        io::ErrorKind::InvalidInput => {
            "a value cannot be passed in an environment variable (NUL byte)".to_owned()
        }
        _ => error.to_string(),
    };
    Err(CliError::new(
        code,
        what,
        why,
        Some("check COMMAND's path and permissions"),
    ))
}
