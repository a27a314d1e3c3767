//! Boot-time unsealing (issue 4): the systemd unit as installed, its hardening
//! score, `sesame systemd run` and `sesame exec`, and the hand-off to a real
//! Exim and a real PHPMailer through a loopback SMTP stand-in for SES.

mod common;

use std::fs;
use std::path::Path;
use std::process::Command;

use common::standin::StandIn;
use common::swtpm::Swtpm;
use common::{expect_code, run, sesame, tmpfs_dir};

const TEMPLATE_SOURCE: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/packaging/systemd/sesame-unseal@.service"
);

/// The hardening bar from the issue.
const MAX_EXPOSURE: f64 = 1.5;

/// Runs `systemd-analyze security --offline=yes` on `unit` inside `root` and
/// returns the overall exposure score.
fn exposure(root: &Path, unit: &str) -> f64 {
    let out = Command::new("systemd-analyze")
        .args(["security", "--offline=yes", "--no-pager"])
        .arg(format!("--root={}", root.display()))
        .arg(unit)
        .output()
        .expect("systemd-analyze is installed (package systemd)");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "systemd-analyze failed on {unit}: {stderr}{stdout}"
    );
    let line = stdout
        .lines()
        .find(|l| l.contains("Overall exposure level"))
        .unwrap_or_else(|| panic!("no score in: {stdout}"));
    let score = line
        .rsplit(':')
        .next()
        .and_then(|s| s.split_whitespace().next())
        .and_then(|s| s.parse::<f64>().ok());
    score.unwrap_or_else(|| panic!("cannot parse score from {line:?}"))
}

fn install(root: &Path, name: &str, extra: &[&str]) -> std::process::Output {
    run(sesame()
        .args(["systemd", "install", name, "--root"])
        .arg(root)
        .args(extra))
}

fn unit_dir(root: &Path) -> std::path::PathBuf {
    root.join("etc/systemd/system")
}

/// The text of instance `name`'s drop-in, `50-sesame.conf`, under `root`.
fn drop_in(root: &Path, name: &str) -> String {
    fs::read_to_string(
        unit_dir(root).join(format!("sesame-unseal@{name}.service.d/50-sesame.conf")),
    )
    .unwrap()
}

/// Asserts that `unit` under `root` scores at most [`MAX_EXPOSURE`].
fn assert_exposure_ok(root: &Path, unit: &str) {
    let score = exposure(root, unit);
    assert!(
        score <= MAX_EXPOSURE,
        "{unit}: exposure {score} > {MAX_EXPOSURE}"
    );
}

#[test]
fn installed_unit_is_the_packaged_text_and_scores_at_most_1_5() {
    let root = tempfile::tempdir().unwrap();
    let out = install(
        root.path(),
        "ses",
        &[
            "--output",
            "exim:passwd.client,group=0",
            "--output",
            "value:username,group=0",
            "--output",
            "value:password,group=0",
            "--output",
            "env:env,prefix=SES_",
            "--before",
            "httpd.service",
            "--enable",
        ],
    );
    expect_code(&out, 0);

    // The same bytes as the file packages ship, and as `systemd template`.
    let packaged = fs::read(TEMPLATE_SOURCE).unwrap();
    let installed = fs::read(unit_dir(root.path()).join("sesame-unseal@.service")).unwrap();
    assert_eq!(installed, packaged);
    let printed = run(sesame().args(["systemd", "template"]));
    expect_code(&printed, 0);
    assert_eq!(printed.stdout, packaged);

    let drop_in = drop_in(root.path(), "ses");
    assert!(drop_in.contains("Before=httpd.service\n"), "{drop_in}");
    assert!(drop_in.contains("Wants=dev-tpmrm0.device\n"), "{drop_in}");
    assert!(drop_in.contains(
        "ExecStart=/usr/bin/sesame --log-format json systemd run %i \
         --tpm2-device device:/dev/tpmrm0 \
         --output exim:passwd.client,group=0,mode=0640 \
         --output value:username,group=0,mode=0640 --output value:password,group=0,mode=0640 \
         --output env:env,prefix=SES_,mode=0600\n"
    ));
    let link = unit_dir(root.path()).join("multi-user.target.wants/sesame-unseal@ses.service");
    assert_eq!(
        fs::read_link(link).unwrap(),
        Path::new("/etc/systemd/system/sesame-unseal@.service")
    );

    // The instance as systemd will load it: template plus drop-in.
    assert_exposure_ok(root.path(), "sesame-unseal@ses.service");
    // A package-installed instance without any drop-in.
    assert_exposure_ok(root.path(), "sesame-unseal@other.service");

    // A SoftHSM instance: writable token dir, no TPM dependency.
    let out = install(
        root.path(),
        "hsm",
        &[
            "--backend",
            "pkcs11",
            "--read-write",
            "/var/lib/softhsm/tokens",
            "--pkcs11-pin-source",
            "file:/etc/sesame/hsm.pin",
        ],
    );
    expect_code(&out, 0);
    assert_exposure_ok(root.path(), "sesame-unseal@hsm.service");
}

/// The drop-in for the TPM `systemd run` will use at boot: resolved at
/// install like every command resolves it (flag, SESAME_TPM2_DEVICE, the
/// tpm2_device setting), pinned in ExecStart= and allowed by the sandbox.
#[test]
fn install_pins_the_configured_tpm_device() {
    let root = tempfile::tempdir().unwrap();

    // From the environment: another device node.
    let out = run(sesame()
        .args(["systemd", "install", "env", "--root"])
        .arg(root.path())
        .env("SESAME_TPM2_DEVICE", "device:/dev/tpm0"));
    expect_code(&out, 0);
    let text = drop_in(root.path(), "env");
    assert!(text.contains("Wants=dev-tpm0.device\n"), "{text}");
    assert!(text.contains("After=dev-tpm0.device\n"), "{text}");
    assert!(text.contains("DeviceAllow=/dev/tpm0 rw\n"), "{text}");
    assert!(
        text.contains(" systemd run %i --tpm2-device device:/dev/tpm0 "),
        "{text}"
    );
    assert_exposure_ok(root.path(), "sesame-unseal@env.service");

    // From sesame.toml: a TCP TCTI, which no DeviceAllow= can reach; the
    // installer says the sandbox needs --network.
    let config = root.path().join("sesame.toml");
    fs::write(
        &config,
        "tpm2_device = \"swtpm:host=127.0.0.1,port=2321\"\n",
    )
    .unwrap();
    let install_with_config = |name: &str, extra: &[&str]| {
        run(sesame()
            .args(["systemd", "install", name, "--root"])
            .arg(root.path())
            .args(extra)
            .env("SESAME_CONFIG", &config))
    };
    let out = install_with_config("toml", &[]);
    expect_code(&out, 0);
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        stdout.contains("note: TPM TCTI swtpm:") && stdout.contains("--network"),
        "{stdout}"
    );
    let text = drop_in(root.path(), "toml");
    assert!(
        !text.contains("Wants=dev-") && !text.contains("DeviceAllow"),
        "{text}"
    );
    assert!(
        text.contains(" --tpm2-device swtpm:host=127.0.0.1,port=2321 "),
        "{text}"
    );
    let out = install_with_config("net", &["--network"]);
    expect_code(&out, 0);
    assert!(!String::from_utf8_lossy(&out.stdout).contains("note: TPM"));
    assert!(drop_in(root.path(), "net").contains("PrivateNetwork=no\n"));
    // The flag wins over the setting; PKCS#11-only instances name no TPM.
    let out = install_with_config("flag", &["--tpm2-device", "device:/dev/tpmrm0"]);
    expect_code(&out, 0);
    assert!(drop_in(root.path(), "flag").contains(" --tpm2-device device:/dev/tpmrm0 "));
    let out = install_with_config("hsm", &["--backend", "pkcs11"]);
    expect_code(&out, 0);
    assert!(
        !drop_in(root.path(), "hsm").contains("tpm"),
        "{}",
        drop_in(root.path(), "hsm")
    );
}

#[test]
fn install_is_idempotent_and_refuses_to_clobber_or_inject() {
    let root = tempfile::tempdir().unwrap();
    expect_code(&install(root.path(), "ses", &[]), 0);
    let again = install(root.path(), "ses", &[]);
    expect_code(&again, 0);
    assert!(String::from_utf8_lossy(&again.stdout).contains("already up to date"));

    // A different drop-in is not overwritten silently.
    let changed = install(root.path(), "ses", &["--output", "json:all"]);
    let stderr = expect_code(&changed, 73);
    assert!(stderr.contains("50-sesame.conf"), "{stderr}");
    expect_code(
        &install(root.path(), "ses", &["--output", "json:all", "--force"]),
        0,
    );

    for bad in [
        vec!["--before", "a.service b.service"],
        vec!["--output", "exim:../passwd.client"],
        vec!["--output", "exim:p,mode=0644"],
        vec!["--tpm2-device", "device:/dev/tpmrm0\nExecStartPre=/bin/sh"],
        vec!["--sesame-path", "/usr/bin/sesame %n"],
    ] {
        let out = install(root.path(), "x", &bad);
        expect_code(&out, 64);
    }
    for bad_name in ["../x", "a b", "-x", "a/b"] {
        expect_code(&install(root.path(), bad_name, &[]), 64);
    }
    assert!(!unit_dir(root.path())
        .join("sesame-unseal@x.service.d")
        .exists());
}

#[test]
fn run_checks_its_destination_before_touching_hardware() {
    // The sealed file does not exist: every failure below comes from the
    // pre-checks, proving they happen before any unseal attempt (which would
    // fail with 66).
    let missing = Path::new("/nonexistent/ses.sealed");
    let tmpfs = tmpfs_dir();
    let run_in = |dir: &Path, extra: &[&str]| {
        run(sesame()
            .args(["systemd", "run", "ses", "--sealed"])
            .arg(missing)
            .arg("--dir")
            .arg(dir)
            .args(extra))
    };
    let stderr = expect_code(&run_in(&tmpfs.path().join("absent"), &[]), 73);
    assert!(stderr.contains("does not exist"), "{stderr}");
    let disk = tempfile::tempdir_in(env!("CARGO_MANIFEST_DIR")).unwrap();
    if !sesame::fsio::is_memory_fs(disk.path()) {
        let stderr = expect_code(&run_in(disk.path(), &[]), 73);
        assert!(stderr.contains("tmpfs"), "{stderr}");
    }
    expect_code(
        &run_in(
            tmpfs.path(),
            &["--output", "exim:p,group=no-such-group-sesame"],
        ),
        64,
    );
    expect_code(
        &run_in(tmpfs.path(), &["--output", "exim:p", "--output", "json:p"]),
        64,
    );
    expect_code(&run_in(tmpfs.path(), &["--output", "env:e,prefix=1X"]), 64);
    // RUNTIME_DIRECTORY is how systemd passes the directory.
    let out = run(sesame()
        .args(["systemd", "run", "ses", "--sealed"])
        .arg(missing)
        .env("RUNTIME_DIRECTORY", tmpfs.path()));
    let stderr = expect_code(&out, 66);
    assert!(stderr.contains("/nonexistent/ses.sealed"), "{stderr}");
    assert_eq!(fs::read_dir(tmpfs.path()).unwrap().count(), 0);
}

#[test]
fn exec_usage_errors() {
    // No `--`: COMMAND is required.
    expect_code(&run(sesame().args(["exec", "/nonexistent"])), 64);
    expect_code(
        &run(sesame().args(["exec", "/nonexistent", "--env-prefix", "1X", "--", "true"])),
        64,
    );
    let stderr = expect_code(
        &run(sesame().args(["exec", "/nonexistent/x.sealed", "--", "true"])),
        66,
    );
    assert!(stderr.contains("/nonexistent/x.sealed"), "{stderr}");
}

// ---------------------------------------------------------------------------
// End to end: swtpm + the unit's ExecStart + real Exim / PHPMailer + SES stand-in.
// ---------------------------------------------------------------------------

use std::os::unix::fs::PermissionsExt as _;
use std::path::PathBuf;

const SES_USER: &str = "AKIASESAMETEST0001";
// Shaped like an SES SMTP password (base64 alphabet with + / =).
const SES_PASSWORD: &str = "BOk9v+Wd/Q3x7yTz1uVs0pQ8rLmN2kJhGfEdCbA9=";
/// The PCR the tests seal to and extend (16: the debug PCR, resettable,
/// unused by firmware).
const PCR: u8 = 16;

/// The end-to-end set-up: an SES stand-in, a fresh swtpm, a work dir and the
/// credentials sealed there (see [`seal_credentials`]).
fn e2e() -> (StandIn, Swtpm, tempfile::TempDir, PathBuf) {
    let standin = StandIn::start(SES_USER, SES_PASSWORD);
    let tpm = Swtpm::start();
    let work = tempfile::tempdir().unwrap();
    let sealed = seal_credentials(&tpm, &standin, work.path());
    (standin, tpm, work, sealed)
}

/// Asserts that `standin` received exactly one message, from [`SES_USER`]
/// over TLS, with `subject`.
fn assert_one_message(standin: &StandIn, subject: &str) {
    let messages = standin.records("message");
    assert_eq!(messages.len(), 1, "{messages:?}");
    assert_eq!(messages[0]["user"], SES_USER);
    assert_eq!(messages[0]["tls"], true);
    assert!(messages[0]["data"]
        .as_str()
        .unwrap()
        .contains(&format!("Subject: {subject}")));
}

/// Seals the SES credentials (host and port pointing at the stand-in) to
/// `tpm`, bound to `PCR`.
fn seal_credentials(tpm: &Swtpm, standin: &StandIn, dir: &Path) -> PathBuf {
    let sealed = dir.join("ses.sealed");
    let secret = format!(
        "{{\"username\":\"{SES_USER}\",\"password\":\"{SES_PASSWORD}\",\
         \"host\":\"localhost\",\"port\":\"{}\",\"region\":\"us-east-1\"}}",
        standin.port()
    );
    let out = common::run_with_stdin(
        sesame()
            .args([
                "seal",
                "--tpm2",
                "--tpm2-device",
                &tpm.tcti(),
                "--tpm2-pcrs",
                &PCR.to_string(),
            ])
            .arg("--out")
            .arg(&sealed),
        secret.as_bytes(),
    );
    expect_code(&out, 0);
    sealed
}

/// Installs the instance with `--root` and returns the unit's `ExecStart=`
/// argument vector, `%i` expanded, the binary replaced by the one under test,
/// and the sealed file moved from /etc/sesame (the only differences from what
/// systemd would run).
fn unit_exec_start(root: &Path, tpm: &Swtpm, sealed: &Path, outputs: &[&str]) -> Vec<String> {
    let mut args = vec!["--tpm2-device".to_owned(), tpm.tcti()];
    for o in outputs {
        args.extend(["--output".to_owned(), (*o).to_owned()]);
    }
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    expect_code(&install(root, "ses", &args), 0);
    let drop_in = drop_in(root, "ses");
    let line = drop_in
        .lines()
        .filter_map(|l| l.strip_prefix("ExecStart="))
        .find(|l| !l.is_empty())
        .expect("drop-in has an ExecStart");
    let mut argv: Vec<String> = line.split(' ').map(|w| w.replace("%i", "ses")).collect();
    assert_eq!(argv[0], "/usr/bin/sesame");
    argv.remove(0);
    argv.extend(["--sealed".to_owned(), sealed.display().to_string()]);
    argv
}

/// What systemd does for `RuntimeDirectory=sesame/%i`, `RuntimeDirectoryMode=0711`.
fn runtime_directory() -> tempfile::TempDir {
    let dir = tmpfs_dir();
    fs::set_permissions(dir.path(), fs::Permissions::from_mode(0o711)).unwrap();
    dir
}

fn run_unit_step(argv: &[String], runtime_dir: &Path) -> std::process::Output {
    run(sesame().args(argv).env("RUNTIME_DIRECTORY", runtime_dir))
}

/// The audit events on a unit step's stderr (what journald stores): the
/// unit's `--log-format json` makes each one a JSON line.
fn audit_events(stderr: &str) -> Vec<serde_json::Value> {
    stderr
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .filter(|v| v["target"] == "sesame::audit")
        .collect()
}

/// The group Exim's processes run as on this system.
fn exim_account() -> &'static str {
    for name in ["Debian-exim", "exim", "mailnull"] {
        if nix::unistd::User::from_name(name).ok().flatten().is_some() {
            return name;
        }
    }
    panic!("no Exim user (install exim4-daemon-light)");
}

/// A private Exim set-up: the router/transport/authenticator from docs/exim.md
/// pointed at the stand-in and at `passwd_client`.
struct Exim {
    dir: tempfile::TempDir,
}

impl Exim {
    fn new(standin: &StandIn, passwd_client: &Path) -> Self {
        let dir = tempfile::tempdir().unwrap();
        fs::set_permissions(dir.path(), fs::Permissions::from_mode(0o755)).unwrap();
        let account = exim_account();
        let user = nix::unistd::User::from_name(account).unwrap().unwrap();
        for sub in ["spool", "log"] {
            let p = dir.path().join(sub);
            fs::create_dir(&p).unwrap();
            nix::unistd::chown(&p, Some(user.uid), Some(user.gid)).unwrap();
        }
        let d = dir.path().display();
        let pc = passwd_client.display();
        let config = format!(
            "primary_hostname = sesame-test.example\n\
             spool_directory = {d}/spool\n\
             log_file_path = {d}/log/%slog\n\
             exim_user = {account}\n\
             exim_group = {account}\n\
             never_users = root\n\
             keep_environment =\n\
             disable_ipv6 = true\n\
             \n\
             begin routers\n\
             ses_smarthost:\n  driver = manualroute\n  domains = *\n  transport = ses_smtp\n  \
               route_list = * localhost byname\n  self = send\n  no_more\n\
             \n\
             begin transports\n\
             ses_smtp:\n  driver = smtp\n  port = {port}\n  allow_localhost\n  \
               hosts_require_tls = *\n  hosts_require_auth = *\n  tls_verify_hosts = *\n  \
               tls_verify_certificates = {ca}\n\
             \n\
             begin retry\n* * F,1h,1h\n\
             \n\
             begin authenticators\n\
             ses_login:\n  driver = plaintext\n  public_name = LOGIN\n  \
               client_send = : ${{extract{{1}}{{::}}{{${{lookup{{$host}}nwildlsearch{{{pc}}}}}}}}} \\\n                \
               : ${{extract{{2}}{{::}}{{${{lookup{{$host}}nwildlsearch{{{pc}}}}}}}}}\n",
            port = standin.port(),
            ca = standin.ca().display(),
        );
        fs::write(dir.path().join("exim.conf"), config).unwrap();
        Self { dir }
    }

    /// Submits one message and delivers it in the foreground (`-odf`), as
    /// the Exim user (with `-C`, Exim keeps no privilege anyway).
    fn send(&self, subject: &str) {
        let account = exim_account();
        let message = format!("Subject: {subject}\n\nHello from the sesame boot test.\n");
        let out = common::run_with_stdin(
            Command::new("setpriv")
                .args(["--reuid", account, "--regid", account, "--clear-groups"])
                .args(["exim4", "-C"])
                .arg(self.dir.path().join("exim.conf"))
                .args([
                    "-odf",
                    "-i",
                    "-f",
                    "app@sesame-test.example",
                    "someone@example.net",
                ]),
            message.as_bytes(),
        );
        assert!(
            out.status.success(),
            "exim4 refused the message: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }

    fn mainlog(&self) -> String {
        fs::read_to_string(self.dir.path().join("log/mainlog")).unwrap_or_default()
    }
}

#[test]
fn exim_delivers_through_ses_with_the_unsealed_passwd_client() {
    let (standin, tpm, work, sealed) = e2e();
    let group = exim_account();
    let argv = unit_exec_start(
        &work.path().join("root"),
        &tpm,
        &sealed,
        &[
            &format!("exim:passwd.client,group={group}"),
            "env:env,prefix=SES_",
        ],
    );
    let run_dir = runtime_directory();
    let stderr = expect_code(&run_unit_step(&argv, run_dir.path()), 0);
    // One JSON audit event for the boot unseal.
    let events = audit_events(&stderr);
    assert_eq!(events.len(), 1, "{stderr}");
    assert_eq!(events[0]["event"], "unseal");
    assert_eq!(events[0]["outcome"], "ok");
    assert_eq!(events[0]["backend"], "tpm2");
    assert!(!stderr.contains(SES_PASSWORD));

    let passwd_client = run_dir.path().join("passwd.client");
    let meta = fs::metadata(&passwd_client).unwrap();
    assert_eq!(meta.permissions().mode() & 0o777, 0o640);
    let gid = nix::unistd::Group::from_name(group).unwrap().unwrap().gid;
    assert_eq!(std::os::unix::fs::MetadataExt::gid(&meta), gid.as_raw());
    assert_eq!(
        fs::read_to_string(&passwd_client).unwrap(),
        format!("localhost:{SES_USER}:{SES_PASSWORD}\n")
    );
    let env = run_dir.path().join("env");
    assert_eq!(common::mode(&env), 0o600);
    assert!(fs::read_to_string(&env)
        .unwrap()
        .contains(&format!("SES_USERNAME=\"{SES_USER}\"\n")));

    let exim = Exim::new(&standin, &passwd_client);
    exim.send("sesame exim e2e");
    let log = exim.mainlog();
    assert!(
        log.contains("=> someone@example.net R=ses_smarthost T=ses_smtp")
            && log.contains("A=ses_login")
            && log.contains("CV=yes"),
        "Exim did not deliver with AUTH over verified TLS:\n{log}"
    );
    assert_one_message(&standin, "sesame exim e2e");
    let auths = standin.records("auth");
    assert!(
        auths
            .iter()
            .all(|a| a["ok"] == true && a["user"] == SES_USER),
        "{auths:?}"
    );
}

#[test]
fn phpmailer_under_sesame_exec_sends_with_credentials_from_its_environment() {
    let (standin, tpm, work, sealed) = e2e();
    let script = work.path().join("send.php");
    fs::write(&script, PHP_SCRIPT).unwrap();

    let exec = |command: &[&str]| {
        run(sesame()
            .arg("exec")
            .arg(&sealed)
            .args(["--tpm2-device", &tpm.tcti(), "--env-prefix", "SES_", "--"])
            .args(command))
    };
    let out = exec(&[
        "php",
        &script.display().to_string(),
        &standin.ca().display().to_string(),
    ]);
    let stderr = expect_code(&out, 0);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(stdout.contains("sent"), "stdout: {stdout} stderr: {stderr}");
    assert!(!stdout.contains(SES_PASSWORD) && !stderr.contains(SES_PASSWORD));
    assert_one_message(&standin, "sesame phpmailer e2e");

    // exec is the command: its exit status, and 127 for a missing command.
    expect_code(&exec(&["sh", "-c", "exit 3"]), 3);
    expect_code(
        &exec(&["sh", "-c", &format!("test \"$SES_USERNAME\" = {SES_USER}")]),
        0,
    );
    expect_code(&exec(&["/nonexistent/sesame-test-command"]), 127);
}

#[test]
fn exec_does_not_hand_sesames_own_tss2_log_to_the_command() {
    let tpm = Swtpm::start();
    let work = tempfile::tempdir().unwrap();
    let sealed = work.path().join("s.sealed");
    let out = common::run_with_stdin(
        tpm.sesame().args(["seal", "--tpm2", "--out"]).arg(&sealed),
        br#"{"username":"u","password":"p"}"#,
    );
    expect_code(&out, 0);
    let exec = |tss2_log: Option<&str>| {
        let mut cmd = tpm.sesame();
        cmd.arg("exec")
            .arg(&sealed)
            .args(["--", "sh", "-c", "echo ${TSS2_LOG-unset}"]);
        match tss2_log {
            Some(level) => cmd.env("TSS2_LOG", level),
            None => cmd.env_remove("TSS2_LOG"),
        };
        let out = run(&mut cmd);
        let stderr = expect_code(&out, 0);
        // libtss2 stayed quiet for sesame either way.
        assert!(stderr.is_empty(), "{stderr}");
        String::from_utf8_lossy(&out.stdout).trim().to_owned()
    };
    // The caller had none: sesame set it for itself only.
    assert_eq!(exec(None), "unset");
    // The caller's own choice is passed on unchanged.
    assert_eq!(exec(Some("all+NONE")), "all+NONE");
}

/// Reads everything from the environment sesame exec set; only the CA file
/// (not a secret) comes on argv.
const PHP_SCRIPT: &str = r#"<?php
use PHPMailer\PHPMailer\PHPMailer;
require '/usr/share/php/libphp-phpmailer/autoload.php';

function ses(string $name): string {
    $value = getenv('SES_' . $name);
    if ($value === false || $value === '') {
        fwrite(STDERR, "SES_$name is not set\n");
        exit(2);
    }
    return $value;
}

$mail = new PHPMailer(true);
$mail->isSMTP();
$mail->Host = ses('HOST');
$mail->Port = (int) ses('PORT');
$mail->SMTPSecure = PHPMailer::ENCRYPTION_STARTTLS;
$mail->SMTPAuth = true;
$mail->Username = ses('USERNAME');
$mail->Password = ses('PASSWORD');
$mail->SMTPOptions = ['ssl' => [
    'verify_peer' => true,
    'verify_peer_name' => true,
    'peer_name' => 'localhost',
    'cafile' => $argv[1],
]];
$mail->setFrom('app@sesame-test.example');
$mail->addAddress('someone@example.net');
$mail->Subject = 'sesame phpmailer e2e';
$mail->Body = 'Hello from PHPMailer under sesame exec.';
$mail->send();
echo "sent\n";
"#;

#[test]
fn after_a_pcr_extend_nothing_is_written_and_exim_fails_closed() {
    let (standin, tpm, work, sealed) = e2e();
    let group = exim_account();
    let argv = unit_exec_start(
        &work.path().join("root"),
        &tpm,
        &sealed,
        &[
            &format!("exim:passwd.client,group={group}"),
            &format!("value:username,group={group}"),
            &format!("value:password,group={group}"),
            "env:env",
        ],
    );

    // As a boot component would: the sealed policy no longer holds.
    tpm.extend_pcr(PCR);
    let run_dir = runtime_directory();
    let stderr = expect_code(&run_unit_step(&argv, run_dir.path()), 77);
    assert!(stderr.contains("PCR 16"), "{stderr}");
    let events = audit_events(&stderr);
    assert_eq!(events.len(), 1, "{stderr}");
    assert_eq!(events[0]["outcome"], "failed");
    assert!(
        events[0]["reason"].as_str().unwrap().contains("PCR 16"),
        "{stderr}"
    );
    assert!(!stderr.contains(SES_PASSWORD));
    let left: Vec<_> = fs::read_dir(run_dir.path()).unwrap().collect();
    assert!(
        left.is_empty(),
        "files left after a refused unseal: {left:?}"
    );

    // Exim configured for the file that never appeared: it must defer, not
    // send without authentication.
    let exim = Exim::new(&standin, &run_dir.path().join("passwd.client"));
    exim.send("must not be relayed");
    let log = exim.mainlog();
    assert!(
        log.contains("== someone@example.net R=ses_smarthost T=ses_smtp defer"),
        "Exim did not defer:\n{log}"
    );
    assert!(!log.contains("=> someone@example.net"), "{log}");
    assert!(standin.records("message").is_empty());
    assert!(standin.records("auth").iter().all(|a| a["ok"] == false));

    // exec fails closed the same way: sesame's 77, the command never runs.
    let marker = work.path().join("ran");
    let out = run(sesame()
        .arg("exec")
        .arg(&sealed)
        .args(["--tpm2-device", &tpm.tcti(), "--", "touch"])
        .arg(&marker));
    expect_code(&out, 77);
    assert!(!marker.exists());
}
