//! `sesame ses derive-password`, `sesame ses check`, and the `--ses` options
//! of `sesame seal`.

use std::io::{IsTerminal as _, Read as _, Write as _};
use std::path::PathBuf;
use std::time::Duration;

use clap::{Args, Subcommand};
use sesame::secret::SecretDocument;
use sesame::ses::smtp::{self, CheckError, CheckParams};
use sesame::ses::{self, Origin, Region, Rejected, SesError, SesOptions, SmtpSettings};
use sesame::{envelope, fsio};
use zeroize::Zeroizing;

use super::audit::{Audit, Outcome};
use super::backends::UnsealBackendArgs;
use super::{exit, CliError, Context};

/// Exit code of `ses check` when TLS cannot be established or the server does
/// not speak SMTP as SES does (sysexits EX_PROTOCOL).
pub const EXIT_TLS: u8 = 76;

/// `--ses` and friends of `sesame seal`.
#[derive(Debug, Args)]
pub struct SesSealArgs {
    /// Seal an AWS SES SMTP document. Standard input holds `access_key_id` and
    /// `secret_access_key` (the SMTP password is derived from it and the secret
    /// key is not sealed), or a ready `username` and `password`; as JSON or
    /// KEY=VALUE lines. The sealed document has username, password, host, port,
    /// region and created. A bad --ses-* flag exits 64; a bad region, host or
    /// port field of the input exits 65 (named, never quoted).
    #[arg(long, help_heading = "SES")]
    pub ses: bool,
    /// AWS region of the SES endpoint (else the input's `region` field).
    #[arg(long, value_name = "REGION", requires = "ses", help_heading = "SES")]
    pub ses_region: Option<String>,
    /// SMTP host [default: email-smtp.REGION.amazonaws.com].
    #[arg(long, value_name = "HOST", requires = "ses", help_heading = "SES")]
    pub ses_endpoint: Option<String>,
    /// SMTP port [default: 587].
    #[arg(long, value_name = "PORT", requires = "ses", help_heading = "SES",
          value_parser = clap::value_parser!(u16).range(1..))]
    pub ses_port: Option<u16>,
    /// Accept a well-formed region that sesame does not know to have an SMTP endpoint.
    #[arg(long, requires = "ses", help_heading = "SES")]
    pub ses_any_region: bool,
}

impl SesSealArgs {
    /// What to prompt for on a terminal.
    pub fn prompt_fields(&self) -> [&'static str; 2] {
        if self.ses {
            ["access_key_id", "secret_access_key"]
        } else {
            ["username", "password"]
        }
    }

    /// Without `--ses`, the input unchanged; with it, the SES document.
    pub fn finish(&self, input: SecretDocument, created: &str) -> Result<SecretDocument, CliError> {
        if !self.ses {
            return Ok(input);
        }
        let options = SesOptions {
            region: self.ses_region.clone(),
            allow_unlisted_region: self.ses_any_region,
            host: self.ses_endpoint.clone(),
            port: self.ses_port,
            created: created.to_owned(),
        };
        ses::build_document(&input, &options).map_err(|e| ses_error("SES credentials", e))
    }
}

/// `sesame ses …`
#[derive(Debug, Args)]
pub struct SesArgs {
    #[command(subcommand)]
    command: SesCommand,
}

#[derive(Debug, Subcommand)]
enum SesCommand {
    /// Print the SES SMTP password derived from an IAM secret access key read
    /// on standard input (never give it as an argument).
    DerivePassword(DeriveArgs),
    /// Prove sealed SES credentials work: unseal in memory, then connect,
    /// EHLO, STARTTLS (certificate verified), AUTH and QUIT, sending nothing.
    ///
    /// Exit codes: 0 authenticated; 69 endpoint unreachable (DNS, connection,
    /// timeout); 76 TLS failure (no STARTTLS, handshake or certificate
    /// verification failed) or a server that does not offer AUTH PLAIN/LOGIN;
    /// 77 credentials refused by the server; 75 temporary failure (4xx reply);
    /// 64 bad flags; 65 a host, port or region field of the document that is
    /// not one (the message names the field, never its value); plus the
    /// unseal exit codes (65, 66, 69, 75, 77) if the file cannot be unsealed.
    Check(CheckArgs),
}

/// `sesame ses derive-password --region REGION < secret-access-key`
#[derive(Debug, Args)]
struct DeriveArgs {
    /// AWS region the password is for (SMTP passwords are per region).
    #[arg(long, value_name = "REGION")]
    region: String,
    /// Accept a well-formed region that sesame does not know to have an SMTP endpoint.
    #[arg(long)]
    any_region: bool,
}

/// `sesame ses check FILE [--host H --port P] [--ca-file PEM]`
#[derive(Debug, Args)]
struct CheckArgs {
    /// The sealed SES file.
    #[arg(required_unless_present = "stdin", value_name = "FILE")]
    file: Option<PathBuf>,
    /// Check credentials read from standard input instead (as `seal --ses`
    /// reads them), e.g. new credentials before they are sealed.
    #[arg(long, conflicts_with = "file")]
    stdin: bool,
    /// With --stdin: the region, if the input has none.
    #[arg(long, value_name = "REGION", requires = "stdin")]
    region: Option<String>,
    /// Connect here instead of the document's host.
    #[arg(long, value_name = "HOST")]
    host: Option<String>,
    /// Connect to this port instead of the document's (a STARTTLS port).
    #[arg(long, value_name = "PORT", value_parser = clap::value_parser!(u16).range(1..))]
    port: Option<u16>,
    /// Also trust the CA certificates in this PEM file.
    #[arg(long, value_name = "PEM")]
    ca_file: Option<PathBuf>,
    /// Network timeout per step, in seconds.
    #[arg(long, value_name = "SECONDS", default_value = "30",
          value_parser = clap::value_parser!(u64).range(1..=600))]
    timeout: u64,
    #[command(flatten)]
    backends: UnsealBackendArgs,
}

pub fn run(ctx: &Context, args: SesArgs) -> Result<(), CliError> {
    match args.command {
        SesCommand::DerivePassword(a) => derive_password(&a),
        SesCommand::Check(a) => check(ctx, &a),
    }
}

fn ses_error(what: &str, e: SesError) -> CliError {
    let hint = match &e {
        SesError::UnknownRegion { .. } => Some(
            "check the region; if AWS added an SMTP endpoint there after this release, pass --ses-any-region (seal) or --any-region (derive-password)",
        ),
        SesError::UnexpectedField { .. } | SesError::Credentials(_) | SesError::Missing(_) => {
            Some("see sesame seal --help for the SES input fields")
        }
        _ => None,
    };
    let code = match e.rejected() {
        // A region, host or port given as a flag is a usage error; one from
        // the secret input or the sealed document is bad data, like the rest.
        Some(Rejected::Argument(_)) => exit::USAGE,
        _ => exit::DATAERR,
    };
    CliError::new(code, what, e.to_string(), hint)
}

fn derive_password(args: &DeriveArgs) -> Result<(), CliError> {
    let what = "ses derive-password";
    // Check the region before asking for the secret.
    let region = Region::parse(&args.region, args.any_region, Origin::Argument)
        .map_err(|e| ses_error(what, e))?;
    let secret = read_secret_key()?;
    let password = ses::derive_smtp_password(&secret, &region).map_err(|e| ses_error(what, e))?;
    let mut stdout = std::io::stdout().lock();
    stdout
        .write_all(password.expose().as_bytes())
        .and_then(|()| stdout.write_all(b"\n"))
        .and_then(|()| stdout.flush())
        .map_err(|e| CliError::new(exit::CANTCREAT, "standard output", e.to_string(), None))
}

/// The secret access key: prompted without echo on a terminal, else the first
/// line of standard input.
fn read_secret_key() -> Result<Zeroizing<String>, CliError> {
    let stdin = std::io::stdin();
    if stdin.is_terminal() {
        return rpassword::prompt_password("AWS secret access key: ")
            .map(Zeroizing::new)
            .map_err(|e| CliError::new(exit::NOINPUT, "terminal", e.to_string(), None));
    }
    let mut input = Zeroizing::new(Vec::with_capacity(4096));
    stdin
        .lock()
        .take(4096)
        .read_to_end(&mut input)
        .map_err(|e| CliError::new(exit::NOINPUT, "standard input", e.to_string(), None))?;
    let text = std::str::from_utf8(&input).map_err(|_| {
        CliError::new(
            exit::DATAERR,
            "standard input",
            "the secret access key is not UTF-8 text",
            None,
        )
    })?;
    let line = text.lines().next().unwrap_or("").trim();
    if line.is_empty() {
        return Err(CliError::new(
            exit::DATAERR,
            "standard input",
            "no secret access key given",
            Some("pipe the IAM secret access key into standard input"),
        ));
    }
    Ok(Zeroizing::new(line.to_owned()))
}

fn check(ctx: &Context, args: &CheckArgs) -> Result<(), CliError> {
    let extra_roots = match &args.ca_file {
        None => None,
        Some(path) => Some(
            fsio::read_bounded(path, 1 << 20)
                .map_err(|e| CliError::io(format!("--ca-file {}", path.display()), e))?,
        ),
    };
    let document = match &args.file {
        Some(file) => {
            super::unseal::unseal_file_for(ctx, file, &args.backends, "ses-check")?.document
        }
        None => {
            let input = super::seal::read_secret(["access_key_id", "secret_access_key"])?;
            let options = SesOptions {
                region: args.region.clone(),
                allow_unlisted_region: true,
                host: None,
                port: None,
                created: envelope::now_rfc3339(),
            };
            ses::build_document(&input, &options).map_err(|e| ses_error("SES credentials", e))?
        }
    };
    let what = match &args.file {
        Some(f) => format!("ses check {}", f.display()),
        None => "ses check".to_owned(),
    };
    let settings = SmtpSettings::from_document(&document, args.host.as_deref(), args.port)
        .map_err(|e| ses_error(&what, e))?;
    let params = CheckParams {
        host: &settings.host,
        port: settings.port,
        username: settings.username,
        password: settings.password,
        extra_roots_pem: extra_roots.as_deref(),
        timeout: Duration::from_secs(args.timeout),
    };
    let result = smtp::check(&params);
    let endpoint = format!("{}:{}", settings.host, settings.port);
    match &result {
        Ok(_) => audit_check(args, &endpoint, Outcome::Ok, None),
        Err(e) => audit_check(args, &endpoint, Outcome::Failed, Some(&e.to_string())),
    }
    let report = result.map_err(|e| check_error(&what, e))?;
    // Nothing from the sealed document but the endpoint: not the user name.
    println!(
        "ok: authenticated to {endpoint} ({}) with AUTH {} after STARTTLS; no mail sent",
        report.server_name, report.mechanism
    );
    Ok(())
}

fn audit_check(args: &CheckArgs, endpoint: &str, outcome: Outcome, reason: Option<&str>) {
    Audit {
        file: args.file.as_deref(),
        endpoint: Some(endpoint),
        outcome,
        reason,
        ..Audit::new("ses-check", "ses-check")
    }
    .emit();
}

fn check_error(what: &str, e: CheckError) -> CliError {
    let (code, hint) = match &e {
        CheckError::Unreachable { .. } => (
            exit::UNAVAILABLE,
            "check the host, port, DNS and outbound firewall (EC2 restricts port 25; use 587)",
        ),
        CheckError::Tls { .. } => (
            EXIT_TLS,
            "the server's certificate must be trusted and valid for the host name; --ca-file adds a CA",
        ),
        CheckError::Protocol { .. } => (EXIT_TLS, "is this an SES SMTP endpoint?"),
        CheckError::AuthRefused { .. } => (
            exit::NOPERM,
            "the credentials are wrong, for another region, or the IAM user lacks ses:SendRawEmail",
        ),
        CheckError::Temporary { .. } => (exit::TEMPFAIL, "try again later"),
        CheckError::BadCaFile(_) => (exit::USAGE, "give a PEM file with CA certificates"),
        CheckError::ImplicitTlsPort(_) => (exit::USAGE, "pass --port 587"),
        _ => (exit::SOFTWARE, ""),
    };
    CliError::new(
        code,
        what,
        e.to_string(),
        Some(hint).filter(|h| !h.is_empty()),
    )
}
