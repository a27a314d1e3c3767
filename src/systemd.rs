//! Boot-time unsealing: the `sesame-unseal@.service` template unit, the
//! per-instance drop-in `sesame systemd install` writes, and the output specs
//! the unit's `sesame systemd run` turns into files under `/run/sesame/NAME/`.
//!
//! Pure code over strings: writing the files is the CLI's job, through
//! [`crate::fsio`].

use std::fmt;
use std::str::FromStr;

use crate::output::{OutputFormat, RenderOptions};

/// The template unit, byte for byte what packages ship
/// (`packaging/systemd/sesame-unseal@.service`).
pub const TEMPLATE: &str = include_str!("../packaging/systemd/sesame-unseal@.service");

/// File name of the template unit.
pub const TEMPLATE_NAME: &str = "sesame-unseal@.service";

/// File name of the drop-in inside `sesame-unseal@NAME.service.d/`.
pub const DROP_IN_NAME: &str = "50-sesame.conf";

/// Where sealed files conventionally live: `/etc/sesame/NAME.sealed`.
pub const SEALED_DIR: &str = "/etc/sesame";

/// Parent of the per-instance runtime directories: `/run/sesame/NAME/`.
pub const RUNTIME_PARENT: &str = "/run/sesame";

/// Where the unit expects the binary (what packages install).
pub const DEFAULT_BINARY: &str = "/usr/bin/sesame";

/// The units the template orders itself before (the drop-in may add more).
pub const DEFAULT_BEFORE: [&str; 3] = ["exim.service", "exim4.service", "php-fpm.service"];

/// Exit codes the unit must not retry (everything sesame documents except 75).
/// Kept in step with the template by a test.
pub const NO_RETRY_CODES: [u8; 10] = [1, 2, 64, 65, 66, 69, 70, 73, 77, 78];

/// Things that make an instance name, output spec or unit setting unusable.
/// Messages quote only what the user typed on the command line, never secrets.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[non_exhaustive]
pub enum SystemdError {
    /// The instance name cannot be both a file name and a unit instance.
    #[error("instance name {0:?} must be 1-64 characters of A-Z a-z 0-9 _ . - and not start with . or -")]
    BadName(String),
    /// An `--output` spec does not parse.
    #[error("output spec {spec:?}: {why}")]
    BadSpec {
        /// The spec as given.
        spec: String,
        /// What is wrong with it.
        why: String,
    },
    /// A value would need quoting or escaping in a unit file; refused rather
    /// than risk a unit that means something else.
    #[error("{what} {value:?} contains characters a unit file line cannot hold safely (allowed: A-Z a-z 0-9 _ . , : = / @ + - *)")]
    UnsafeUnitValue {
        /// Which option.
        what: &'static str,
        /// The value.
        value: String,
    },
    /// Two outputs write the same file.
    #[error("two outputs write {0:?}")]
    DuplicateFile(String),
}

/// Checks an instance name: it becomes `/etc/sesame/NAME.sealed`,
/// `/run/sesame/NAME/` and `sesame-unseal@NAME.service`, so it is limited to
/// characters that mean the same in all three (no systemd escaping needed).
///
/// # Errors
/// [`SystemdError::BadName`].
pub fn check_name(name: &str) -> Result<(), SystemdError> {
    let ok = !name.is_empty()
        && name.len() <= 64
        && !name.starts_with(['.', '-'])
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'.' | b'-'));
    if ok {
        Ok(())
    } else {
        Err(SystemdError::BadName(name.to_owned()))
    }
}

/// One file `sesame systemd run` writes into the runtime directory:
/// `FORMAT:FILE[,mode=0640][,group=G][,field=F][,prefix=P][,host=PATTERN]`.
///
/// `value:username` writes the field `username` to the file `username`
/// (`field=` overrides which field), ready for Exim's `${readfile{…}}`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct OutputSpec {
    /// Output format.
    pub format: OutputFormat,
    /// File name inside the runtime directory (no `/`).
    pub file: String,
    /// Permission bits.
    pub mode: u32,
    /// Group owner (name or gid), if any.
    pub group: Option<String>,
    /// For `value`: the field (defaults to the file name).
    pub field: Option<String>,
    /// For `env`: variable name prefix.
    pub env_prefix: String,
    /// For `exim`: host pattern (default: the `host` field, else `*`).
    pub exim_host: Option<String>,
}

impl OutputSpec {
    /// The options [`crate::output::render`] needs for this output.
    pub fn render_options(&self) -> RenderOptions {
        RenderOptions {
            field: self.field.clone(),
            env_prefix: self.env_prefix.clone(),
            exim_host: self.exim_host.clone(),
        }
    }

    /// The outputs `sesame systemd run` writes when none are given: Exim's
    /// `passwd.client` and an `env` file, both readable by root only.
    pub fn defaults() -> Vec<Self> {
        ["exim:passwd.client", "env:env"]
            .iter()
            // Invariant: both literals are valid specs (pinned by a unit test).
            .map(|s| s.parse().expect("built-in output spec parses"))
            .collect()
    }
}

impl FromStr for OutputSpec {
    type Err = SystemdError;

    fn from_str(spec: &str) -> Result<Self, Self::Err> {
        let bad = |why: &str| SystemdError::BadSpec {
            spec: spec.to_owned(),
            why: why.to_owned(),
        };
        check_unit_value("--output", spec)?;
        let (format, rest) = spec
            .split_once(':')
            .ok_or_else(|| bad("expected FORMAT:FILE[,key=value…]"))?;
        let format = match format {
            "json" => OutputFormat::Json,
            "env" => OutputFormat::Env,
            "exim" => OutputFormat::Exim,
            "value" => OutputFormat::Value,
            _ => return Err(bad("FORMAT must be json, env, exim or value")),
        };
        let mut parts = rest.split(',');
        // Invariant: split always yields at least one item.
        let file = parts.next().unwrap_or_default();
        let file_ok = !file.is_empty()
            && file.len() <= 128
            && !file.starts_with('.')
            && file
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'.' | b'-'));
        if !file_ok {
            return Err(bad(
                "FILE must be a plain file name (A-Z a-z 0-9 _ . -, not starting with .)",
            ));
        }
        let mut out = Self {
            format,
            file: file.to_owned(),
            mode: 0o600,
            group: None,
            field: None,
            env_prefix: String::new(),
            exim_host: None,
        };
        let mut mode_given = false;
        for part in parts {
            let (key, value) = part
                .split_once('=')
                .ok_or_else(|| bad("options are key=value"))?;
            if value.is_empty() {
                return Err(bad("an option's value is empty"));
            }
            match key {
                "mode" => {
                    let mode = u32::from_str_radix(value, 8)
                        .map_err(|_| bad("mode must be octal, like 0640"))?;
                    if mode & !0o770 != 0 {
                        return Err(bad(
                            "mode may grant only owner and group bits (plaintext is never world-readable)",
                        ));
                    }
                    out.mode = mode;
                    mode_given = true;
                }
                "group" => out.group = Some(value.to_owned()),
                "field" if format == OutputFormat::Value => out.field = Some(value.to_owned()),
                "prefix" if format == OutputFormat::Env => out.env_prefix = value.to_owned(),
                "host" if format == OutputFormat::Exim => out.exim_host = Some(value.to_owned()),
                _ => return Err(bad(
                    "unknown option (mode, group; field for value, prefix for env, host for exim)",
                )),
            }
        }
        // A group grant without a group-readable mode is useless; with a group
        // the natural default is 0640.
        if out.group.is_some() && !mode_given {
            out.mode = 0o640;
        }
        if format == OutputFormat::Value && out.field.is_none() {
            out.field = Some(out.file.clone());
        }
        Ok(out)
    }
}

impl fmt::Display for OutputSpec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let format = match self.format {
            OutputFormat::Json => "json",
            OutputFormat::Env => "env",
            OutputFormat::Exim => "exim",
            OutputFormat::Value => "value",
        };
        write!(f, "{format}:{}", self.file)?;
        if let Some(field) = &self.field {
            if *field != self.file {
                write!(f, ",field={field}")?;
            }
        }
        if !self.env_prefix.is_empty() {
            write!(f, ",prefix={}", self.env_prefix)?;
        }
        if let Some(host) = &self.exim_host {
            write!(f, ",host={host}")?;
        }
        if let Some(group) = &self.group {
            write!(f, ",group={group}")?;
        }
        write!(f, ",mode={:04o}", self.mode)
    }
}

/// Refuses two specs writing the same file.
///
/// # Errors
/// [`SystemdError::DuplicateFile`].
pub fn check_distinct(specs: &[OutputSpec]) -> Result<(), SystemdError> {
    for (i, a) in specs.iter().enumerate() {
        if specs[..i].iter().any(|b| b.file == a.file) {
            return Err(SystemdError::DuplicateFile(a.file.clone()));
        }
    }
    Ok(())
}

/// Refuses anything a unit file would reinterpret: whitespace and quotes
/// (word splitting), `%` (specifiers), `$` (variables), `\` (escapes),
/// `;` and newlines. (`*` is kept: systemd does no globbing.)
///
/// # Errors
/// [`SystemdError::UnsafeUnitValue`].
pub fn check_unit_value(what: &'static str, value: &str) -> Result<(), SystemdError> {
    let ok = !value.is_empty()
        && value.bytes().all(|b| {
            b.is_ascii_alphanumeric()
                || matches!(
                    b,
                    b'_' | b'.' | b',' | b':' | b'=' | b'/' | b'@' | b'+' | b'-' | b'*'
                )
        });
    if ok {
        Ok(())
    } else {
        Err(SystemdError::UnsafeUnitValue {
            what,
            value: value.to_owned(),
        })
    }
}

/// Which backend an instance unseals with, for the sandbox it needs.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum InstanceBackend {
    /// Try every stanza (the default): TPM ordering plus whatever PKCS#11 needs.
    Any,
    /// Only the TPM.
    Tpm2,
    /// Only PKCS#11: no TPM device dependency.
    Pkcs11,
}

/// Everything an instance's drop-in says.
#[derive(Clone, Debug)]
pub struct Instance {
    /// Instance name (`/etc/sesame/NAME.sealed`).
    pub name: String,
    /// Files to write under `/run/sesame/NAME/`.
    pub outputs: Vec<OutputSpec>,
    /// Units to order before, besides [`DEFAULT_BEFORE`].
    pub before: Vec<String>,
    /// Which backends to try.
    pub backend: InstanceBackend,
    /// The TCTI `run` uses, written into `ExecStart=` as `--tpm2-device`
    /// and, for a `device:` TCTI, allowed by the sandbox. `sesame systemd
    /// install` always resolves one (flag, `SESAME_TPM2_DEVICE`, the
    /// `tpm2_device` setting, default) unless the instance is PKCS#11-only.
    /// `None`: `run` resolves it at boot and the sandbox assumes
    /// `/dev/tpmrm0`.
    pub tpm2_device: Option<String>,
    /// `--pkcs11-pin-source` for `run`.
    pub pkcs11_pin_source: Option<String>,
    /// Extra device nodes the PKCS#11 module needs (e.g. a USB token).
    pub devices: Vec<String>,
    /// Paths the backend must write (SoftHSM rewrites token files at login).
    pub read_write: Vec<String>,
    /// Whether the backend needs the network (a network HSM such as CloudHSM).
    pub network: bool,
    /// Path of the `sesame` binary.
    pub binary: String,
}

impl Instance {
    /// The TPM device node named by the TCTI, if it is a `device:` TCTI under
    /// `/dev` (default `/dev/tpmrm0`).
    fn tpm_device_node(&self) -> Option<String> {
        if self.backend == InstanceBackend::Pkcs11 {
            return None;
        }
        match self.tpm2_device.as_deref() {
            None => Some("/dev/tpmrm0".to_owned()),
            Some(tcti) => tcti
                .strip_prefix("device:")
                .filter(|p| {
                    p.strip_prefix("/dev/").is_some_and(|n| {
                        !n.is_empty() && n.bytes().all(|b| b.is_ascii_alphanumeric())
                    })
                })
                .map(str::to_owned),
        }
    }

    /// What the drop-in cannot arrange and the installer should say: a TCTI
    /// that is not a device node the sandbox can allow.
    pub fn notes(&self) -> Vec<String> {
        let mut notes = Vec::new();
        let tcti = match (&self.backend, &self.tpm2_device) {
            (InstanceBackend::Pkcs11, _) | (_, None) => return notes,
            (_, Some(tcti)) => tcti,
        };
        if self.tpm_device_node().is_some() {
            return notes;
        }
        if tcti == "device" || tcti.starts_with("device:") {
            notes.push(format!(
                "TPM TCTI {tcti} does not name a device node /dev/NAME the unit can allow \
                 (DevicePolicy=closed); add DeviceAllow= for it to the drop-in"
            ));
        } else if !self.network {
            notes.push(format!(
                "TPM TCTI {tcti} is not a device: the unit gets no TPM device dependency, \
                 and its sandbox has no network (PrivateNetwork=yes); a TCP TCTI \
                 (swtpm, mssim) needs --network"
            ));
        }
        notes
    }

    /// The argument vector of the unit's `ExecStart=` (`%i` unexpanded).
    /// Always `--log-format json`, as in the template: journald then keeps
    /// one JSON audit event per boot unseal (docs/audit.md).
    pub fn exec_start(&self) -> Vec<String> {
        let mut argv = vec![
            self.binary.clone(),
            "--log-format".into(),
            "json".into(),
            "systemd".into(),
            "run".into(),
            "%i".into(),
        ];
        match self.backend {
            InstanceBackend::Any => {}
            InstanceBackend::Tpm2 => argv.extend(["--backend".into(), "tpm2".into()]),
            InstanceBackend::Pkcs11 => argv.extend(["--backend".into(), "pkcs11".into()]),
        }
        if let Some(tcti) = &self.tpm2_device {
            argv.extend(["--tpm2-device".into(), tcti.clone()]);
        }
        if let Some(pin) = &self.pkcs11_pin_source {
            argv.extend(["--pkcs11-pin-source".into(), pin.clone()]);
        }
        for spec in &self.outputs {
            argv.extend(["--output".into(), spec.to_string()]);
        }
        argv
    }

    /// Checks every value that goes into the drop-in.
    ///
    /// # Errors
    /// The first unusable value.
    pub fn validate(&self) -> Result<(), SystemdError> {
        check_name(&self.name)?;
        check_distinct(&self.outputs)?;
        check_unit_value("--sesame-path", &self.binary)?;
        for unit in &self.before {
            check_unit_value("--before", unit)?;
        }
        if let Some(v) = &self.tpm2_device {
            check_unit_value("--tpm2-device", v)?;
        }
        if let Some(v) = &self.pkcs11_pin_source {
            check_unit_value("--pkcs11-pin-source", v)?;
        }
        for v in &self.devices {
            check_unit_value("--device", v)?;
        }
        for v in &self.read_write {
            check_unit_value("--read-write", v)?;
        }
        for spec in &self.outputs {
            check_unit_value("--output", &spec.to_string())?;
        }
        Ok(())
    }

    /// The drop-in's text.
    ///
    /// # Errors
    /// See [`Instance::validate`].
    pub fn drop_in(&self) -> Result<String, SystemdError> {
        self.validate()?;
        let mut unit = String::new();
        let mut service = String::new();
        if !self.before.is_empty() {
            unit.push_str(&format!("Before={}\n", self.before.join(" ")));
        }
        if let Some(node) = self.tpm_device_node() {
            // On systemd < 256 nothing else pulls the device in, so the
            // template's After= would have no job to wait for.
            let unit_name = format!("{}.device", node.trim_start_matches('/').replace('/', "-"));
            unit.push_str(&format!("Wants={unit_name}\nAfter={unit_name}\n"));
            if node != "/dev/tpmrm0" {
                service.push_str(&format!("DeviceAllow={node} rw\n"));
            }
        }
        for dev in &self.devices {
            service.push_str(&format!("DeviceAllow={dev} rw\n"));
        }
        for path in &self.read_write {
            service.push_str(&format!("ReadWritePaths={path}\n"));
        }
        if self.network {
            // A network HSM: undo the template's network lock-down. This costs
            // about 0.5 in systemd-analyze's score (see docs/systemd.md).
            service.push_str(
                "PrivateNetwork=no\nRestrictAddressFamilies=AF_UNIX AF_INET AF_INET6\nIPAddressDeny=\n",
            );
        }
        service
            .push_str("# An empty ExecStart= first: replace the template's, do not add to it.\n");
        service.push_str("ExecStart=\n");
        service.push_str(&format!("ExecStart={}\n", self.exec_start().join(" ")));
        let mut text = format!(
            "# Written by `sesame systemd install {}`; run it again to change this\n\
             # instance, or edit here and `systemctl daemon-reload`.\n",
            self.name
        );
        if !unit.is_empty() {
            text.push_str("\n[Unit]\n");
            text.push_str(&unit);
        }
        text.push_str("\n[Service]\n");
        text.push_str(&service);
        Ok(text)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn instance() -> Instance {
        Instance {
            name: "ses".into(),
            outputs: OutputSpec::defaults(),
            before: vec![],
            backend: InstanceBackend::Any,
            tpm2_device: None,
            pkcs11_pin_source: None,
            devices: vec![],
            read_write: vec![],
            network: false,
            binary: DEFAULT_BINARY.into(),
        }
    }

    #[test]
    fn names() {
        for ok in ["ses", "ses-eu_west.1", "A"] {
            check_name(ok).unwrap();
        }
        for bad in ["", ".x", "-x", "a/b", "a b", "a%i", "a\\x", &"x".repeat(65)] {
            assert!(check_name(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn specs_parse_and_print_back() {
        let s: OutputSpec = "exim:passwd.client,group=Debian-exim".parse().unwrap();
        assert_eq!(s.format, OutputFormat::Exim);
        assert_eq!(s.mode, 0o640);
        assert_eq!(
            s.to_string(),
            "exim:passwd.client,group=Debian-exim,mode=0640"
        );
        let s: OutputSpec = "value:username,group=exim,mode=0440".parse().unwrap();
        assert_eq!(s.field.as_deref(), Some("username"));
        assert_eq!(s.mode, 0o440);
        let s: OutputSpec = "value:pw,field=password".parse().unwrap();
        assert_eq!(s.to_string(), "value:pw,field=password,mode=0600");
        let s: OutputSpec = "env:ses.env,prefix=SES_".parse().unwrap();
        assert_eq!(s.env_prefix, "SES_");
        for spec in [
            "exim:passwd.client",
            "value:pw,field=password,group=www-data,mode=0640",
            "env:e,prefix=SES_,mode=0600",
            "exim:p,host=*.amazonaws.com,mode=0600",
        ] {
            let parsed: OutputSpec = spec.parse().unwrap();
            assert_eq!(parsed.to_string().parse::<OutputSpec>().unwrap(), parsed);
        }
        assert_eq!(OutputSpec::defaults().len(), 2);
    }

    #[test]
    fn bad_specs() {
        for bad in [
            "passwd.client",
            "yaml:x",
            "exim:../x",
            "exim:a/b",
            "exim:.hidden",
            "exim:",
            "exim:x,mode=0644",
            "exim:x,mode=9",
            "exim:x,field=password",
            "json:x,group=",
            "json:x,bogus",
            "json:x y",
            "json:x,group=$USER",
            "json:x%i",
        ] {
            assert!(bad.parse::<OutputSpec>().is_err(), "{bad:?}");
        }
        let dup = vec!["exim:a".parse().unwrap(), "env:a".parse().unwrap()];
        assert!(matches!(
            check_distinct(&dup),
            Err(SystemdError::DuplicateFile(_))
        ));
    }

    #[test]
    fn drop_in_for_tpm_and_pkcs11() {
        let text = instance().drop_in().unwrap();
        assert!(text.contains("Wants=dev-tpmrm0.device\n"));
        assert!(text.contains(
            "ExecStart=\nExecStart=/usr/bin/sesame --log-format json systemd run %i --output exim:passwd.client,mode=0600 --output env:env,mode=0600\n"
        ));
        assert!(!text.contains("PrivateNetwork"));

        let mut p = instance();
        p.backend = InstanceBackend::Pkcs11;
        p.read_write = vec!["/var/lib/softhsm/tokens".into()];
        p.pkcs11_pin_source = Some("file:/etc/sesame/hsm.pin".into());
        p.network = true;
        p.before = vec!["httpd.service".into()];
        let text = p.drop_in().unwrap();
        assert!(!text.contains("tpmrm0"));
        assert!(text.contains("Before=httpd.service\n"));
        assert!(text.contains("ReadWritePaths=/var/lib/softhsm/tokens\n"));
        assert!(text.contains("PrivateNetwork=no\n"));
        assert!(text.contains("--backend pkcs11 --pkcs11-pin-source file:/etc/sesame/hsm.pin"));

        let mut t = instance();
        t.tpm2_device = Some("device:/dev/tpmrm1".into());
        let text = t.drop_in().unwrap();
        assert!(text.contains("Wants=dev-tpmrm1.device\n"));
        assert!(text.contains("DeviceAllow=/dev/tpmrm1 rw\n"));
        assert!(text.contains(" --tpm2-device device:/dev/tpmrm1 "));
        assert!(t.notes().is_empty());

        // The default device, named: no extra DeviceAllow (the template's).
        t.tpm2_device = Some("device:/dev/tpmrm0".into());
        let text = t.drop_in().unwrap();
        assert!(text.contains("Wants=dev-tpmrm0.device\n"));
        assert!(!text.contains("DeviceAllow"));

        // A TCP TCTI: no device, and a note about the network.
        t.tpm2_device = Some("swtpm:host=127.0.0.1,port=2321".into());
        let text = t.drop_in().unwrap();
        assert!(!text.contains("Wants=dev-"));
        assert!(!text.contains("DeviceAllow"));
        assert!(text.contains(" --tpm2-device swtpm:host=127.0.0.1,port=2321 "));
        assert!(t.notes()[0].contains("--network"), "{:?}", t.notes());
        t.network = true;
        assert!(t.notes().is_empty());
        t.tpm2_device = Some("device:/tmp/tpm".into());
        assert!(t.notes()[0].contains("DeviceAllow="), "{:?}", t.notes());
        t.backend = InstanceBackend::Pkcs11;
        assert!(t.notes().is_empty());

        let mut bad = instance();
        bad.before = vec!["a.service b.service".into()];
        assert!(matches!(
            bad.drop_in(),
            Err(SystemdError::UnsafeUnitValue { .. })
        ));
    }

    #[test]
    fn template_retries_only_on_75() {
        let line = TEMPLATE
            .lines()
            .find(|l| l.starts_with("RestartPreventExitStatus="))
            .expect("template has RestartPreventExitStatus=");
        let codes: Vec<u8> = line
            .trim_start_matches("RestartPreventExitStatus=")
            .split_whitespace()
            .filter_map(|w| w.parse().ok())
            .collect();
        for code in NO_RETRY_CODES {
            assert!(codes.contains(&code), "{code} missing from {line}");
        }
        assert!(!codes.contains(&75));
        // A panic: exit 101 (debug builds), SIGABRT (release: panic = "abort").
        assert!(codes.contains(&101), "{line}");
        for signal in ["SIGABRT", "SIGTERM", "SIGKILL"] {
            assert!(
                line.split_whitespace().any(|w| w == signal),
                "{signal}: {line}"
            );
        }
        assert!(TEMPLATE.contains("\nRestart=on-failure\n"));
        assert!(TEMPLATE.contains("\nType=oneshot\n"));
        assert!(TEMPLATE.contains("\nRemainAfterExit=yes\n"));
        assert!(TEMPLATE.contains("\nRuntimeDirectory=sesame/%i\n"));
        assert!(TEMPLATE.contains("\nDevicePolicy=closed\n"));
        assert!(TEMPLATE.contains("\nDeviceAllow=/dev/tpmrm0 rw\n"));
        assert!(TEMPLATE.contains(&format!("\nBefore={}\n", DEFAULT_BEFORE.join(" "))));
        assert!(TEMPLATE.contains(&format!(
            "\nExecStart={DEFAULT_BINARY} --log-format json systemd run %i\n"
        )));
    }
}
