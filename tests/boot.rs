//! Boot-time unsealing (issue 4): the systemd unit as installed, its hardening
//! score, `sesame systemd run` and `sesame exec`, and the hand-off to a real
//! Exim and a real PHPMailer through a loopback SMTP stand-in for SES.

mod common;

use std::fs;
use std::path::Path;
use std::process::Command;

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

    let drop_in = fs::read_to_string(
        unit_dir(root.path()).join("sesame-unseal@ses.service.d/50-sesame.conf"),
    )
    .unwrap();
    assert!(drop_in.contains("Before=httpd.service\n"), "{drop_in}");
    assert!(drop_in.contains("Wants=dev-tpmrm0.device\n"), "{drop_in}");
    assert!(drop_in.contains(
        "ExecStart=/usr/bin/sesame systemd run %i --output exim:passwd.client,group=0,mode=0640 \
         --output value:username,group=0,mode=0640 --output value:password,group=0,mode=0640 \
         --output env:env,prefix=SES_,mode=0600\n"
    ));
    let link = unit_dir(root.path()).join("multi-user.target.wants/sesame-unseal@ses.service");
    assert_eq!(
        fs::read_link(link).unwrap(),
        Path::new("/etc/systemd/system/sesame-unseal@.service")
    );

    // The instance as systemd will load it: template plus drop-in.
    let score = exposure(root.path(), "sesame-unseal@ses.service");
    assert!(score <= MAX_EXPOSURE, "exposure {score} > {MAX_EXPOSURE}");
    // A package-installed instance without any drop-in.
    let score = exposure(root.path(), "sesame-unseal@other.service");
    assert!(score <= MAX_EXPOSURE, "template alone: {score}");

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
    let score = exposure(root.path(), "sesame-unseal@hsm.service");
    assert!(score <= MAX_EXPOSURE, "pkcs11 instance: {score}");
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
