//! A file sealed to both a TPM (swtpm) and a PKCS#11 token (SoftHSM): each
//! backend alone can unseal it, losing one leaves the other working, and
//! `inspect` / `status` report the TPM's PCR drift while the HSM keeps the
//! file usable.

mod common;

use std::path::PathBuf;
use std::process::Command;

use common::softhsm::SoftHsm;
use common::swtpm::Swtpm;
use common::{expect_code, run, run_with_stdin};

const SECRET: &str = "both-backends-SECRET-4711";

struct Both {
    tpm: Swtpm,
    hsm: SoftHsm,
    _dir: tempfile::TempDir,
    sealed: PathBuf,
}

impl Both {
    fn new() -> Self {
        let tpm = Swtpm::start();
        let hsm = SoftHsm::new("both");
        hsm.create_key("kek", "aes");
        let dir = tempfile::tempdir().unwrap();
        let sealed = dir.path().join("ses.sealed");
        let input = format!("username=AKIAEXAMPLE\npassword={SECRET}\n");
        let out = run_with_stdin(
            hsm.command()
                .args(["seal", "--out"])
                .arg(&sealed)
                .args(["--tpm2", "--tpm2-device", &tpm.tcti(), "--tpm2-pcrs", "7"])
                .args(["--pkcs11", &hsm.uri("kek")]),
            input.as_bytes(),
        );
        expect_code(&out, 0);
        tpm.assert_clean("seal");
        Self {
            tpm,
            hsm,
            _dir: dir,
            sealed,
        }
    }

    /// `sesame` with both the TPM and the token reachable.
    fn sesame(&self) -> Command {
        let mut cmd = self.hsm.command();
        cmd.env("SESAME_TPM2_DEVICE", self.tpm.tcti());
        cmd
    }

    fn password(&self, extra: &[&str]) -> std::process::Output {
        run(self
            .sesame()
            .arg("unseal")
            .arg(&self.sealed)
            .args(["--format", "value", "--field", "password"])
            .args(extra))
    }
}

#[test]
fn each_backend_alone_unseals() {
    let both = Both::new();
    for backend in ["tpm2", "pkcs11"] {
        let out = both.password(&["--backend", backend]);
        expect_code(&out, 0);
        assert_eq!(out.stdout, SECRET.as_bytes(), "--backend {backend}");
    }
    both.tpm.assert_clean("unseal");
    let out = run(common::sesame().arg("inspect").arg(&both.sealed));
    let text = String::from_utf8(expect_code_ok(&out)).unwrap();
    assert!(
        text.contains("stanza 1: tpm2") && text.contains("stanza 2: pkcs11"),
        "{text}"
    );
}

#[test]
fn losing_one_backend_leaves_the_other() {
    let mut both = Both::new();
    // TPM gone (instance without its TPM, or device missing): the token unseals.
    both.tpm.stop();
    let out = both.password(&[]);
    expect_code(&out, 0);
    assert_eq!(out.stdout, SECRET.as_bytes());
    let out = both.password(&["--backend", "tpm2"]);
    expect_code(&out, 69);

    // Token unreachable (wrong PIN source) but the TPM back: the TPM unseals.
    both.tpm.restart();
    let wrong = both.hsm.dir().join("wrong.pin");
    common::write_private(&wrong, "000000");
    let source = format!("file:{}", wrong.display());
    let out = both.password(&["--pkcs11-pin-source", &source]);
    expect_code(&out, 0);
    assert_eq!(out.stdout, SECRET.as_bytes());
    let out = both.password(&["--backend", "pkcs11", "--pkcs11-pin-source", &source]);
    expect_code(&out, 77);
    both.tpm.assert_clean("unseal after restart");
}

#[test]
fn pcr_drift_is_reported_and_the_token_still_unseals() {
    let both = Both::new();
    let status = |both: &Both| {
        let out = run(both.sesame().args(["status", "--json"]).arg(&both.sealed));
        let code = out.status.code();
        let json: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
            panic!(
                "status --json: {e}: {}",
                String::from_utf8_lossy(&out.stdout)
            )
        });
        assert!(!String::from_utf8_lossy(&out.stdout).contains(SECRET));
        (code, json)
    };
    let (code, json) = status(&both);
    assert_eq!(code, Some(0), "{json}");
    assert!(json.to_string().contains("\"unchanged\""), "{json}");

    both.tpm.extend_pcr(7);
    // Pre-flight in inspect names the PCR.
    let out = run(common::sesame()
        .args(["inspect", "--tpm2-device", &both.tpm.tcti()])
        .arg(&both.sealed));
    let text = String::from_utf8(expect_code_ok(&out)).unwrap();
    assert!(text.contains("PCR 7"), "{text}");
    // The TPM refuses with 77 and names the PCR; the whole unseal still
    // succeeds through the token.
    let out = both.password(&["--backend", "tpm2"]);
    let stderr = expect_code(&out, 77);
    assert!(stderr.contains("PCR 7"), "{stderr}");
    let out = both.password(&[]);
    expect_code(&out, 0);
    assert_eq!(out.stdout, SECRET.as_bytes());
    // status: WARNING (one backend cannot unseal, drift), not CRITICAL.
    let (code, json) = status(&both);
    assert_eq!(code, Some(1), "{json}");
    assert!(json.to_string().contains("\"changed\""), "{json}");
    both.tpm.assert_clean("status and inspect");
}

fn expect_code_ok(out: &std::process::Output) -> Vec<u8> {
    expect_code(out, 0);
    out.stdout.clone()
}
