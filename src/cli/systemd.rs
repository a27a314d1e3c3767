//! `sesame systemd install|run|template`: boot-time unsealing.

use std::fs;
use std::io::Write as _;
use std::path::{Path, PathBuf};

use clap::{Args, Subcommand};
use sesame::fsio::{self, WriteOptions};
use sesame::output;
use sesame::systemd::{self, Instance, InstanceBackend, OutputSpec, SystemdError};
use zeroize::Zeroizing;

use super::backends::{BackendKind, Tpm2DeviceArg, UnsealBackendArgs};
use super::unseal::unseal_file;
use super::{exit, CliError, Context};

/// `sesame systemd …`
#[derive(Debug, Args)]
pub struct SystemdArgs {
    #[command(subcommand)]
    command: SystemdCommand,
}

#[derive(Debug, Subcommand)]
enum SystemdCommand {
    /// Install the sesame-unseal@.service template and the drop-in for instance NAME.
    ///
    /// Writes <ROOT>/etc/systemd/system/sesame-unseal@.service (the same text
    /// packages ship) and <ROOT>/etc/systemd/system/sesame-unseal@NAME.service.d/50-sesame.conf.
    /// The unit unseals /etc/sesame/NAME.sealed at boot into /run/sesame/NAME/.
    /// Run `systemctl daemon-reload` afterwards.
    Install(InstallArgs),
    /// Unseal once and write every output into the runtime directory (the unit's ExecStart).
    ///
    /// All outputs are rendered before any is written; if one cannot be
    /// written, those already written are removed again.
    Run(RunArgs),
    /// Print the template unit (for packagers).
    Template,
}

/// `sesame systemd install NAME …`
#[derive(Debug, Args)]
pub struct InstallArgs {
    /// Instance name: the unit unseals /etc/sesame/NAME.sealed.
    name: String,
    /// Install into this staging root instead of / (for packaging and tests).
    #[arg(long, value_name = "DIR", default_value = "/")]
    root: PathBuf,
    /// A file to write under /run/sesame/NAME/ (repeatable):
    /// FORMAT:FILE[,mode=0640][,group=G][,field=F][,prefix=P][,host=PATTERN].
    /// FORMAT is json, env, exim or value (value:F writes field F). With a
    /// group the mode defaults to 0640, else 0600.
    /// [default: exim:passwd.client env:env]
    #[arg(long = "output", value_name = "SPEC")]
    outputs: Vec<OutputSpec>,
    /// Also order the unit before this unit (repeatable); exim.service,
    /// exim4.service and php-fpm.service are always included.
    #[arg(long, value_name = "UNIT")]
    before: Vec<String>,
    /// Unseal only with this backend (without tpm2, no TPM device dependency).
    #[arg(long, value_enum)]
    backend: Option<BackendKind>,
    /// The TPM the unit uses: resolved now like every command resolves it
    /// (this flag, SESAME_TPM2_DEVICE, the tpm2_device setting, default)
    /// and written into the drop-in with the device access it needs.
    #[command(flatten)]
    tpm2_device: Tpm2DeviceArg,
    /// PIN source for PKCS#11 (`file:PATH`), if not the one in the sealed file.
    #[arg(long, value_name = "SOURCE")]
    pkcs11_pin_source: Option<String>,
    /// An extra device node the PKCS#11 module needs, e.g. a USB token (repeatable).
    #[arg(long, value_name = "PATH")]
    device: Vec<String>,
    /// A path the backend must be able to write, e.g. /var/lib/softhsm/tokens (repeatable).
    #[arg(long, value_name = "PATH")]
    read_write: Vec<String>,
    /// Allow network access (a network HSM such as CloudHSM). Weakens the sandbox.
    #[arg(long)]
    network: bool,
    /// Path of the sesame binary in the unit.
    #[arg(long, value_name = "PATH", default_value = systemd::DEFAULT_BINARY)]
    sesame_path: String,
    /// Also enable the instance (the symlink `systemctl enable` would make).
    #[arg(long)]
    enable: bool,
    /// Replace a template or drop-in that differs from what would be written.
    #[arg(long)]
    force: bool,
}

/// `sesame systemd run NAME …`
#[derive(Debug, Args)]
pub struct RunArgs {
    /// Instance name.
    name: String,
    /// The sealed file [default: /etc/sesame/NAME.sealed].
    #[arg(long, value_name = "PATH")]
    sealed: Option<PathBuf>,
    /// Directory for the outputs; systemd sets RUNTIME_DIRECTORY
    /// [default: /run/sesame/NAME].
    #[arg(long, env = "RUNTIME_DIRECTORY", value_name = "DIR")]
    dir: Option<PathBuf>,
    /// A file to write (repeatable), as for `install --output`
    /// [default: exim:passwd.client env:env].
    #[arg(long = "output", value_name = "SPEC")]
    outputs: Vec<OutputSpec>,
    /// Allow a directory that is not on tmpfs/ramfs.
    #[arg(long)]
    allow_persistent: bool,
    #[command(flatten)]
    backends: UnsealBackendArgs,
}

pub fn run(ctx: &Context, args: SystemdArgs) -> Result<(), CliError> {
    match args.command {
        SystemdCommand::Install(a) => install(ctx, a),
        SystemdCommand::Run(a) => run_instance(ctx, a),
        SystemdCommand::Template => {
            let mut stdout = std::io::stdout().lock();
            stdout
                .write_all(systemd::TEMPLATE.as_bytes())
                .and_then(|()| stdout.flush())
                .map_err(|e| CliError::new(exit::CANTCREAT, "standard output", e.to_string(), None))
        }
    }
}

fn usage(what: &str, e: SystemdError) -> CliError {
    CliError::usage(
        what,
        e.to_string(),
        Some("see `sesame systemd install --help`"),
    )
}

fn install(ctx: &Context, args: InstallArgs) -> Result<(), CliError> {
    let what = format!("install sesame-unseal@{}.service", args.name);
    let outputs = if args.outputs.is_empty() {
        OutputSpec::defaults()
    } else {
        args.outputs
    };
    let backend = match args.backend {
        None => InstanceBackend::Any,
        Some(BackendKind::Tpm2) => InstanceBackend::Tpm2,
        Some(BackendKind::Pkcs11) => InstanceBackend::Pkcs11,
    };
    // Pinned in the drop-in: at boot `run` would resolve the same settings,
    // but the sandbox (DeviceAllow=) must be written for that device now.
    let tpm2_device = (backend != InstanceBackend::Pkcs11).then(|| args.tpm2_device.resolve(ctx));
    let instance = Instance {
        name: args.name.clone(),
        outputs,
        before: args.before,
        backend,
        tpm2_device,
        pkcs11_pin_source: args.pkcs11_pin_source,
        devices: args.device,
        read_write: args.read_write,
        network: args.network,
        binary: args.sesame_path,
    };
    let drop_in = instance.drop_in().map_err(|e| usage(&what, e))?;

    let unit_dir = args.root.join("etc/systemd/system");
    let template_path = unit_dir.join(systemd::TEMPLATE_NAME);
    let drop_in_dir = unit_dir.join(format!("sesame-unseal@{}.service.d", args.name));
    let drop_in_path = drop_in_dir.join(systemd::DROP_IN_NAME);
    create_dirs(&drop_in_dir).map_err(|e| CliError::io(&what, e))?;
    let mut written = Vec::new();
    for (path, text) in [
        (&template_path, systemd::TEMPLATE),
        (&drop_in_path, drop_in.as_str()),
    ] {
        if install_file(path, text.as_bytes(), args.force).map_err(|e| CliError::io(&what, e))? {
            written.push(path.display().to_string());
        }
    }
    if args.enable {
        let wants = unit_dir.join("multi-user.target.wants");
        create_dirs(&wants).map_err(|e| CliError::io(&what, e))?;
        let link = wants.join(format!("sesame-unseal@{}.service", args.name));
        // The target as the running system sees it, not the staging root.
        let target = Path::new("/etc/systemd/system").join(systemd::TEMPLATE_NAME);
        match fs::read_link(&link) {
            Ok(existing) if existing == target => {}
            _ => {
                fsio::remove_if_present(&link)
                    .and_then(|()| std::os::unix::fs::symlink(&target, &link))
                    .map_err(|source| {
                        CliError::io(
                            &what,
                            fsio::IoError::Write {
                                path: link.clone(),
                                source,
                            },
                        )
                    })?;
                written.push(link.display().to_string());
            }
        }
    }

    let sealed = args
        .root
        .join(systemd::SEALED_DIR.trim_start_matches('/'))
        .join(format!("{}.sealed", args.name));
    let mut out = std::io::stdout().lock();
    let report = (|| -> std::io::Result<()> {
        if written.is_empty() {
            writeln!(
                out,
                "sesame-unseal@{}.service: already up to date",
                args.name
            )?;
        }
        for path in &written {
            writeln!(out, "wrote {path}")?;
        }
        for note in instance.notes() {
            writeln!(out, "note: {note}")?;
        }
        if !sealed.exists() {
            writeln!(
                out,
                "note: {} does not exist yet; seal it with `sesame seal --out …`",
                sealed.display()
            )?;
        }
        writeln!(
            out,
            "next: systemctl daemon-reload && systemctl {} sesame-unseal@{}.service",
            if args.enable { "start" } else { "enable --now" },
            args.name
        )?;
        out.flush()
    })();
    report.map_err(|e| CliError::new(exit::CANTCREAT, "standard output", e.to_string(), None))
}

fn create_dirs(dir: &Path) -> Result<(), fsio::IoError> {
    fs::create_dir_all(dir).map_err(|source| fsio::IoError::Write {
        path: dir.to_owned(),
        source,
    })
}

/// Writes a non-secret unit file (0644) unless an identical one is there.
/// Returns whether anything was written.
fn install_file(path: &Path, bytes: &[u8], force: bool) -> Result<bool, fsio::IoError> {
    match fs::read(path) {
        Ok(existing) if existing == bytes => return Ok(false),
        Ok(_) if !force => {
            return Err(fsio::IoError::Exists {
                path: path.to_owned(),
            })
        }
        _ => {}
    }
    let options = WriteOptions {
        mode: 0o644,
        group: None,
        force: true,
        allow_persistent: true,
    };
    fsio::write_atomic(path, bytes, &options)?;
    Ok(true)
}

/// A rendered output ready to be written.
struct Pending {
    path: PathBuf,
    bytes: Zeroizing<Vec<u8>>,
    options: WriteOptions,
}

fn run_instance(ctx: &Context, args: RunArgs) -> Result<(), CliError> {
    let what = format!("sesame-unseal@{}", args.name);
    systemd::check_name(&args.name).map_err(|e| usage(&what, e))?;
    let outputs = if args.outputs.is_empty() {
        OutputSpec::defaults()
    } else {
        args.outputs
    };
    systemd::check_distinct(&outputs).map_err(|e| usage(&what, e))?;
    let sealed = args
        .sealed
        .unwrap_or_else(|| Path::new(systemd::SEALED_DIR).join(format!("{}.sealed", args.name)));
    let dir = args
        .dir
        .unwrap_or_else(|| Path::new(systemd::RUNTIME_PARENT).join(&args.name));

    // Everything checkable is checked before the hardware is touched, so a
    // mistake in the drop-in costs no unseal (and no TPM/HSM audit event).
    let dir_what = format!("write {}", dir.display());
    if !dir.is_dir() {
        return Err(CliError::new(
            exit::CANTCREAT,
            dir_what,
            "the output directory does not exist",
            Some("run through systemd (RuntimeDirectory=) or create it on a tmpfs"),
        ));
    }
    if !args.allow_persistent && !fsio::is_memory_fs(&dir) {
        return Err(CliError::io(
            &dir_what,
            fsio::IoError::NotTmpfs { path: dir.clone() },
        ));
    }
    let mut planned = Vec::with_capacity(outputs.len());
    for spec in &outputs {
        let path = dir.join(&spec.file);
        let group = spec
            .group
            .as_deref()
            .map(fsio::lookup_group)
            .transpose()
            .map_err(|e| CliError::io(format!("write {}", path.display()), e))?;
        if spec.format == output::OutputFormat::Env {
            output::check_prefix(&spec.env_prefix).map_err(|e| CliError::output(&what, e))?;
        }
        let options = WriteOptions {
            mode: spec.mode,
            group,
            // The directory belongs to this unit; a rerun replaces atomically.
            force: true,
            allow_persistent: args.allow_persistent,
        };
        planned.push((spec, path, options));
    }

    let unsealed = unseal_file(ctx, &sealed, &args.backends)?;
    let unseal_what = format!("unseal {}", sealed.display());
    let mut pending = Vec::with_capacity(planned.len());
    for (spec, path, options) in planned {
        let bytes = output::render(&unsealed.document, spec.format, &spec.render_options())
            .map_err(|e| CliError::output(format!("{unseal_what} for {}", spec.file), e))?;
        pending.push(Pending {
            path,
            bytes,
            options,
        });
    }
    drop(unsealed);

    let mut done: Vec<&Path> = Vec::with_capacity(pending.len());
    for p in &pending {
        if let Err(e) = fsio::write_atomic(&p.path, &p.bytes, &p.options) {
            // All or nothing: a consumer must not start with half its files.
            for path in &done {
                if let Err(err) = fsio::remove_if_present(path) {
                    tracing::warn!(file = %path.display(), error = %err, "cannot remove partial output");
                }
            }
            return Err(CliError::io(format!("write {}", p.path.display()), e));
        }
        done.push(&p.path);
    }
    for p in &pending {
        tracing::info!(file = %p.path.display(), mode = format!("{:04o}", p.options.mode), "wrote output");
    }
    Ok(())
}
