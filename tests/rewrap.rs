//! `sesame rewrap` and `sesame rotate` against real SoftHSM tokens and swtpm
//! instances, one of each per test.

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;

use common::softhsm::SoftHsm;
use common::swtpm::Swtpm;
use common::{expect_code, run, run_with_stdin};
use sesame::backend::tpm2::Tpm2Backend;
use sesame::backend::KeyBackend as _;
use sesame::envelope::{self, UnsealError};
use sesame::format::{self, Header};

const SECRET: &str = "zq7-UNIQUE-rewrap-password-81c2";
const NEW_SECRET: &str = "k3p-UNIQUE-rotated-password-5d0a";

fn input(password: &str) -> Vec<u8> {
    format!("username=AKIAEXAMPLE\npassword={password}\nhost=email-smtp.eu-west-1.amazonaws.com\n")
        .into_bytes()
}

/// `sesame` with this token's SoftHSM conf and, if given, this TPM.
fn sesame(hsm: &SoftHsm, tpm: Option<&Swtpm>) -> Command {
    let mut cmd = hsm.command();
    if let Some(tpm) = tpm {
        cmd.env("SESAME_TPM2_DEVICE", tpm.tcti());
    }
    cmd
}

/// Seals [`SECRET`] under the name "ses prod" to `backends`, asserting success.
fn seal(cmd: &mut Command, file: &Path, backends: &[&str]) {
    let out = run_with_stdin(
        cmd.args(["seal", "--name", "ses prod", "--out"])
            .arg(file)
            .args(backends),
        &input(SECRET),
    );
    expect_code(&out, 0);
}

/// Seals [`SECRET`] as `name` in `hsm`'s directory: to `tpm` with `tpm_flags`
/// (e.g. `--tpm2`), then to `hsm`'s key `kek`.
fn seal_with_kek(hsm: &SoftHsm, tpm: Option<&Swtpm>, name: &str, tpm_flags: &[&str]) -> PathBuf {
    let file = hsm.dir().join(name);
    let uri = hsm.uri("kek");
    let backends: Vec<&str> = tpm_flags
        .iter()
        .copied()
        .chain(["--pkcs11", &uri])
        .collect();
    seal(&mut sesame(hsm, tpm), &file, &backends);
    file
}

/// Unseals `file` with `tpm`'s stanza alone and asserts exit `code`.
fn tpm2_unseal(tpm: &Swtpm, file: &Path, code: i32) {
    let out = run(tpm.sesame().args(["unseal", "--backend", "tpm2"]).arg(file));
    expect_code(&out, code);
}

/// Runs `rewrap FILE ARGS`, asserts exit `code` and returns stderr.
fn rewrap(cmd: &mut Command, file: &Path, args: &[&str], code: i32) -> String {
    expect_code(&run(cmd.arg("rewrap").arg(file).args(args)), code)
}

/// Runs `rotate FILE ARGS` with `secret` on stdin, asserts exit `code` and
/// returns stderr.
fn rotate(cmd: &mut Command, file: &Path, args: &[&str], secret: &[u8], code: i32) -> String {
    expect_code(
        &run_with_stdin(cmd.arg("rotate").arg(file).args(args), secret),
        code,
    )
}

/// The password the file unseals to, with `args` (e.g. `--backend tpm2`).
fn password(cmd: &mut Command, file: &Path, args: &[&str]) -> String {
    let out = run(cmd
        .args(["unseal", "--format", "value", "--field", "password"])
        .args(args)
        .arg(file));
    expect_code(&out, 0);
    String::from_utf8(out.stdout).unwrap()
}

fn header(file: &Path) -> Header {
    format::parse_header_only(&std::fs::read(file).unwrap()).unwrap()
}

fn kinds(file: &Path) -> Vec<String> {
    header(file).stanzas.into_iter().map(|s| s.kind).collect()
}

/// Nothing but `expected` in `dir`: no temp file left behind.
fn assert_only(dir: &Path, expected: &[&Path]) {
    let mut names: Vec<PathBuf> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| {
            p.file_name()
                .unwrap()
                .to_string_lossy()
                .starts_with(".sesame-")
                || p.extension().is_some_and(|e| e == "sealed")
        })
        .collect();
    names.sort();
    let mut want: Vec<PathBuf> = expected.iter().map(|p| p.to_path_buf()).collect();
    want.sort();
    assert_eq!(names, want);
}

fn audit_events(stderr: &str, event: &str) -> Vec<serde_json::Value> {
    stderr
        .lines()
        .filter(|l| l.starts_with('{'))
        .map(|l| serde_json::from_str::<serde_json::Value>(l).expect("JSON log line"))
        .filter(|v| v["target"] == "sesame::audit" && v["event"] == event)
        .collect()
}

#[test]
fn enrol_a_tpm_with_the_hsm_stanza_then_unseal_with_the_tpm_alone() {
    let hsm = SoftHsm::with_aes_key("sesame", "kek");
    let tpm = Swtpm::start();
    let file = seal_with_kek(&hsm, None, "ses.sealed", &[]);
    let before = header(&file);

    rewrap(
        &mut sesame(&hsm, Some(&tpm)),
        &file,
        &["--keep", "--tpm2", "--tpm2-pcrs", "7"],
        0,
    );
    let after = header(&file);
    assert_eq!(kinds(&file), ["tpm2", "pkcs11"]);
    assert_eq!(after.stanzas[0].field("pcrs"), Some("7"));
    assert_eq!(after.generation, before.generation + 1);
    // The secret is the same credential: it must not look new to `status`.
    assert_eq!(after.created, before.created);
    assert_eq!(after.name.as_deref(), Some("ses prod"));
    // A fresh data key: the kept HSM stanza is a new wrapping.
    assert_ne!(
        after.stanzas[1].field("wrapped"),
        before.stanzas[0].field("wrapped")
    );
    tpm.assert_clean("rewrap");

    // The TPM alone (no SoftHSM conf at all) unseals the same secret.
    let mut tpm_only = tpm.sesame();
    assert_eq!(
        password(&mut tpm_only, &file, &["--backend", "tpm2"]),
        SECRET
    );
    // And the HSM still does.
    assert_eq!(
        password(&mut sesame(&hsm, None), &file, &["--backend", "pkcs11"]),
        SECRET
    );
    assert_only(hsm.dir(), &[&file]);
}

#[test]
fn dropping_a_backend_removes_its_stanza_and_its_old_key_opens_nothing() {
    let hsm = SoftHsm::with_aes_key("sesame", "kek");
    let tpm = Swtpm::start();
    let file = seal_with_kek(&hsm, Some(&tpm), "ses.sealed", &["--tpm2"]);
    let old_bytes = std::fs::read(&file).unwrap();
    let old = format::parse(&old_bytes).unwrap();
    assert_eq!(kinds(&file), ["tpm2", "pkcs11"]);

    rewrap(&mut sesame(&hsm, Some(&tpm)), &file, &["--keep=pkcs11"], 0);
    assert_eq!(kinds(&file), ["pkcs11"]);
    let text = String::from_utf8_lossy(&std::fs::read(&file).unwrap()).into_owned();
    assert!(!text.contains("-> tpm2"), "{text}");
    assert_eq!(header(&file).generation, 2);
    assert_eq!(password(&mut sesame(&hsm, None), &file, &[]), SECRET);
    // The TPM can no longer unseal it: no stanza for it.
    tpm2_unseal(&tpm, &file, 69);

    // Whoever kept the old TPM stanza gets the old data key from the TPM,
    // which opens the old file but not the new one.
    let old_key = Tpm2Backend::for_unsealing(&tpm.tcti())
        .unwrap(&old.header.stanzas[0])
        .expect("the TPM unseals the old stanza");
    assert!(envelope::decrypt(&old_key, &old).is_ok());
    let new = format::parse(&std::fs::read(&file).unwrap()).unwrap();
    assert!(matches!(
        envelope::decrypt(&old_key, &new),
        Err(UnsealError::Tampered { .. })
    ));
    tpm.assert_clean("rewrap and direct unseal");
}

#[test]
fn rewrap_without_keep_replaces_the_backends_and_keep_does_not_duplicate() {
    let hsm = SoftHsm::with_aes_key("sesame", "kek-a");
    hsm.create_key("kek-b", "rsa");
    let file = hsm.dir().join("ses.sealed");
    seal(
        &mut sesame(&hsm, None),
        &file,
        &["--pkcs11", &hsm.uri("kek-a")],
    );

    // Move from key A to key B (RSA: SoftHSM needs OAEP with SHA-1).
    rewrap(
        &mut sesame(&hsm, None),
        &file,
        &["--pkcs11", &hsm.uri("kek-b"), "--pkcs11-oaep-hash", "sha1"],
        0,
    );
    let h = header(&file);
    assert_eq!(h.generation, 2);
    assert_eq!(h.stanzas.len(), 1);
    assert!(h.stanzas[0].field("uri").unwrap().contains("object=kek-b"));
    assert_eq!(h.stanzas[0].field("mechanism"), Some("rsa-oaep"));

    // --keep plus the same key again: one stanza, not two; --keep of an RSA
    // stanza keeps its OAEP hash.
    rewrap(
        &mut sesame(&hsm, None),
        &file,
        &["--keep", "--pkcs11", &hsm.uri("kek-a")],
        0,
    );
    let h = header(&file);
    assert_eq!(h.generation, 3);
    let uris: Vec<&str> = h.stanzas.iter().map(|s| s.field("uri").unwrap()).collect();
    assert_eq!(uris.len(), 2, "{uris:?}");
    assert!(uris[0].contains("object=kek-a") || uris[1].contains("object=kek-a"));
    let rsa = h
        .stanzas
        .iter()
        .find(|s| s.field("mechanism") == Some("rsa-oaep"))
        .unwrap();
    assert_eq!(rsa.field("hash"), Some("sha1"));
    rewrap(
        &mut sesame(&hsm, None),
        &file,
        &["--keep", "--pkcs11", &hsm.uri("kek-a")],
        0,
    );
    assert_eq!(header(&file).stanzas.len(), 2);
    assert_eq!(header(&file).generation, 4);
    // --name renames; the secret is unchanged throughout.
    rewrap(
        &mut sesame(&hsm, None),
        &file,
        &["--keep", "--name", "ses staging"],
        0,
    );
    assert_eq!(header(&file).name.as_deref(), Some("ses staging"));
    assert_eq!(password(&mut sesame(&hsm, None), &file, &[]), SECRET);
    assert_only(hsm.dir(), &[&file]);
}

#[test]
fn moving_to_a_new_machine_keeps_the_hsm_and_refuses_the_old_tpm() {
    let hsm = SoftHsm::with_aes_key("sesame", "kek");
    let old_tpm = Swtpm::start();
    let new_tpm = Swtpm::start();
    let file = seal_with_kek(&hsm, Some(&old_tpm), "ses.sealed", &["--tpm2"]);
    let before = std::fs::read(&file).unwrap();

    // --keep would re-seal the old machine's TPM stanza to this TPM: refused.
    let stderr = rewrap(&mut sesame(&hsm, Some(&new_tpm)), &file, &["--keep"], 77);
    assert!(stderr.contains("different TPM"), "{stderr}");
    assert_eq!(std::fs::read(&file).unwrap(), before);
    new_tpm.assert_clean("refused keep");

    // Keep the HSM, add this TPM; the old TPM stanza is gone.
    rewrap(
        &mut sesame(&hsm, Some(&new_tpm)),
        &file,
        &["--keep=pkcs11", "--tpm2"],
        0,
    );
    assert_eq!(kinds(&file), ["tpm2", "pkcs11"]);
    assert_eq!(
        password(&mut new_tpm.sesame(), &file, &["--backend", "tpm2"]),
        SECRET
    );
    tpm2_unseal(&old_tpm, &file, 77);
}

#[test]
fn rotate_replaces_the_secret_with_the_same_backends() {
    let hsm = SoftHsm::with_aes_key("sesame", "kek");
    let tpm = Swtpm::start();
    tpm.extend_pcr(7);
    let file = seal_with_kek(
        &hsm,
        Some(&tpm),
        "ses.sealed",
        &["--tpm2", "--tpm2-pcrs", "0,7"],
    );
    let before = header(&file);

    rotate(
        &mut sesame(&hsm, Some(&tpm)),
        &file,
        &[],
        &input(NEW_SECRET),
        0,
    );
    let after = header(&file);
    assert_eq!(after.generation, before.generation + 1);
    assert_eq!(after.name, before.name);
    assert_eq!(kinds(&file), ["tpm2", "pkcs11"]);
    assert_eq!(after.stanzas[0].field("pcrs"), Some("0,7"));
    assert_eq!(after.stanzas[0].field("pcr-bank"), Some("sha256"));
    assert_eq!(
        after.stanzas[0].field("pcr-values"),
        before.stanzas[0].field("pcr-values")
    );
    assert_eq!(
        after.stanzas[1].field("uri"),
        before.stanzas[1].field("uri")
    );
    assert_eq!(
        password(&mut tpm.sesame(), &file, &["--backend", "tpm2"]),
        NEW_SECRET
    );
    assert_eq!(
        password(&mut sesame(&hsm, None), &file, &["--backend", "pkcs11"]),
        NEW_SECRET
    );
    tpm.assert_clean("rotate");
    assert_only(hsm.dir(), &[&file]);
}

#[test]
fn rotate_after_a_pcr_change_needs_no_verify() {
    let tpm = Swtpm::start();
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("ses.sealed");
    seal(&mut tpm.sesame(), &file, &["--tpm2", "--tpm2-pcrs", "7"]);
    tpm.extend_pcr(7); // e.g. a Secure Boot db/dbx update
    let before = std::fs::read(&file).unwrap();

    // By default rotate proves access first, which the PCR change prevents.
    let stderr = rotate(&mut tpm.sesame(), &file, &[], &input(NEW_SECRET), 77);
    assert!(stderr.contains("PCR 7"), "{stderr}");
    assert_eq!(std::fs::read(&file).unwrap(), before);

    rotate(
        &mut tpm.sesame(),
        &file,
        &["--no-verify"],
        &input(NEW_SECRET),
        0,
    );
    // Sealed against the PCR values now.
    assert_eq!(password(&mut tpm.sesame(), &file, &[]), NEW_SECRET);
    assert_eq!(header(&file).generation, 2);
    tpm.assert_clean("rotate --no-verify");
    assert_only(dir.path(), &[&file]);

    // --no-verify still refuses another TPM (the stanza records its SRK).
    let other = Swtpm::start();
    let before = std::fs::read(&file).unwrap();
    let stderr = rotate(
        &mut other.sesame(),
        &file,
        &["--no-verify"],
        &input(SECRET),
        77,
    );
    assert!(stderr.contains("different TPM"), "{stderr}");
    assert_eq!(std::fs::read(&file).unwrap(), before);
    other.assert_clean("refused rotate");
}

#[test]
fn rotate_refuses_a_replaced_hsm_key() {
    // Same token and key labels, another key: the recorded CKA_ID differs.
    let a = SoftHsm::with_aes_key("sesame", "kek");
    let b = SoftHsm::with_aes_key("sesame", "kek");
    let file = seal_with_kek(&a, None, "ses.sealed", &[]);
    let before = std::fs::read(&file).unwrap();
    let pin_b = b.pin_source();
    let stderr = rotate(
        &mut sesame(&b, None),
        &file,
        &["--no-verify", "--pkcs11-pin-source", &pin_b],
        &input(NEW_SECRET),
        77,
    );
    assert!(stderr.contains("no longer the key"), "{stderr}");
    assert_eq!(std::fs::read(&file).unwrap(), before);
}

#[test]
fn failures_leave_the_file_byte_identical() {
    let hsm = SoftHsm::with_aes_key("sesame", "kek");
    let tpm = Swtpm::start();
    let file = seal_with_kek(&hsm, None, "ses.sealed", &[]);
    let before = std::fs::read(&file).unwrap();
    let unchanged = |what: &str| {
        assert_eq!(std::fs::read(&file).unwrap(), before, "after {what}");
        assert_only(hsm.dir(), &[&file]);
    };

    // TPM unavailable.
    rewrap(
        &mut sesame(&hsm, None),
        &file,
        &[
            "--keep",
            "--tpm2",
            "--tpm2-device",
            "device:/dev/no-such-tpm",
        ],
        69,
    );
    unchanged("unavailable TPM");

    // Mid-way: the TPM has sealed the new key, then a key is missing.
    let stderr = rewrap(
        &mut sesame(&hsm, Some(&tpm)),
        &file,
        &["--keep", "--tpm2", "--pkcs11", &hsm.uri("nosuch")],
        77,
    );
    assert!(stderr.contains("nosuch"), "{stderr}");
    unchanged("missing key mid-way");
    tpm.assert_clean("failed rewrap");

    // Unsealing fails: a wrong PIN.
    let bad_pin = hsm.dir().join("bad.pin");
    common::write_private(&bad_pin, "000000\n");
    rewrap(
        &mut sesame(&hsm, Some(&tpm)),
        &file,
        &[
            "--tpm2",
            "--pkcs11-pin-source",
            &format!("file:{}", bad_pin.display()),
        ],
        77,
    );
    std::fs::remove_file(&bad_pin).unwrap();
    unchanged("wrong PIN");

    // Nothing to seal to.
    rewrap(&mut sesame(&hsm, None), &file, &[], 64);
    unchanged("no backend");

    // Bad secret input for rotate: after the verifying unseal, before sealing.
    rotate(&mut sesame(&hsm, None), &file, &[], b"not a secret\n", 65);
    unchanged("bad input");
    rotate(&mut sesame(&hsm, None), &file, &[], b"", 65);
    unchanged("empty input");

    // A malformed or missing file: 65 / 66, nothing written.
    let bad = hsm.dir().join("bad.sealed");
    std::fs::write(&bad, b"sesame-sealed v1\ncreated: x\n").unwrap();
    rotate(&mut sesame(&hsm, None), &bad, &[], &input(NEW_SECRET), 65);
    rewrap(&mut sesame(&hsm, None), &bad, &["--keep"], 65);
    assert_eq!(
        std::fs::read(&bad).unwrap(),
        b"sesame-sealed v1\ncreated: x\n"
    );
    std::fs::remove_file(&bad).unwrap();
    let missing = hsm.dir().join("missing.sealed");
    rotate(
        &mut sesame(&hsm, None),
        &missing,
        &[],
        &input(NEW_SECRET),
        66,
    );
    rewrap(&mut sesame(&hsm, None), &missing, &["--keep"], 66);
    assert!(!missing.exists());
    unchanged("malformed and missing files");
}

#[test]
fn mode_group_and_symlink_are_kept() {
    use std::os::unix::fs::{MetadataExt as _, PermissionsExt as _};
    let hsm = SoftHsm::with_aes_key("sesame", "kek");
    let file = seal_with_kek(&hsm, None, "ses-2026.sealed", &[]);
    std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o640)).unwrap();
    let link = hsm.dir().join("ses.sealed");
    std::os::unix::fs::symlink(&file, &link).unwrap();
    let gid = std::fs::metadata(&file).unwrap().gid();

    rewrap(&mut sesame(&hsm, None), &link, &["--keep"], 0);
    assert!(std::fs::symlink_metadata(&link)
        .unwrap()
        .file_type()
        .is_symlink());
    let meta = std::fs::metadata(&file).unwrap();
    assert_eq!(meta.mode() & 0o777, 0o640);
    assert_eq!(meta.gid(), gid);
    assert_eq!(header(&file).generation, 2);
}

#[test]
fn audit_events_for_rewrap_and_rotate_never_hold_the_secret() {
    let hsm = SoftHsm::with_aes_key("sesame", "kek");
    let tpm = Swtpm::start();
    let file = seal_with_kek(&hsm, None, "ses.sealed", &[]);

    let out = run(sesame(&hsm, Some(&tpm))
        .args(["rewrap", "--log-format", "json", "-vvv", "--keep", "--tpm2"])
        .args(["--tpm2-pcrs", "7"])
        .arg(&file));
    let stderr = expect_code(&out, 0);
    let rewraps = audit_events(&stderr, "rewrap");
    assert_eq!(rewraps.len(), 1, "{stderr}");
    let e = &rewraps[0];
    assert_eq!(e["outcome"], "ok");
    assert_eq!(e["purpose"], "rewrap");
    assert_eq!(e["backend"], "tpm2,pkcs11");
    assert_eq!(e["pcrs"], "7");
    assert_eq!(e["generation"], 2);
    assert!(e["file"].as_str().unwrap().ends_with("ses.sealed"));
    // The access that made it possible is audited too.
    let unseals = audit_events(&stderr, "unseal");
    assert_eq!(unseals.len(), 1, "{stderr}");
    assert_eq!(unseals[0]["purpose"], "rewrap");
    assert_eq!(unseals[0]["backend"], "pkcs11");
    assert_eq!(unseals[0]["outcome"], "ok");

    let out = run_with_stdin(
        sesame(&hsm, Some(&tpm))
            .args(["rotate", "--log-format", "json", "-vvv"])
            .arg(&file),
        &input(NEW_SECRET),
    );
    let rotate_ok = expect_code(&out, 0);
    let e = &audit_events(&rotate_ok, "rotate")[0];
    assert_eq!(e["outcome"], "ok");
    assert_eq!(e["generation"], 3);
    assert_eq!(e["backend"], "tpm2,pkcs11");
    assert_eq!(audit_events(&rotate_ok, "unseal")[0]["purpose"], "rotate");

    // Failures: one event each, outcome failed, with the reason.
    tpm.extend_pcr(7);
    let out = run_with_stdin(
        sesame(&hsm, Some(&tpm))
            .args(["rotate", "--log-format", "json", "--backend", "tpm2"])
            .arg(&file),
        &input(SECRET),
    );
    let rotate_failed = expect_code(&out, 77);
    let events = audit_events(&rotate_failed, "rotate");
    assert_eq!(events.len(), 1, "{rotate_failed}");
    assert_eq!(events[0]["outcome"], "failed");
    assert_eq!(events[0]["generation"], 3);
    assert!(events[0]["reason"].as_str().unwrap().contains("PCR 7"));
    assert_eq!(audit_events(&rotate_failed, "unseal")[0]["pcrs"], "7");

    let out = run(sesame(&hsm, Some(&tpm))
        .args(["rewrap", "--log-format", "json", "--keep", "--tpm2-device"])
        .arg("device:/dev/no-such-tpm")
        .arg(&file));
    let rewrap_failed = expect_code(&out, 69);
    let events = audit_events(&rewrap_failed, "rewrap");
    assert_eq!(events.len(), 1, "{rewrap_failed}");
    assert_eq!(events[0]["outcome"], "failed");

    for stderr in [&stderr, &rotate_ok, &rotate_failed, &rewrap_failed] {
        assert!(!stderr.contains(SECRET), "{stderr}");
        assert!(!stderr.contains(NEW_SECRET), "{stderr}");
        assert!(!stderr.contains(hsm.pin()), "{stderr}");
    }
    assert!(out.stdout.is_empty());
}

#[test]
fn help_documents_the_decisions() {
    let out = run(common::sesame().args(["rewrap", "--help"]));
    let help = String::from_utf8_lossy(&out.stdout);
    assert!(help.contains("--keep"), "{help}");
    assert!(help.contains("`created` and `name` are kept"), "{help}");
    let out = run(common::sesame().args(["rotate", "--help"]));
    let help = String::from_utf8_lossy(&out.stdout);
    assert!(help.contains("--no-verify"), "{help}");
    assert!(help.contains("ses check --stdin"), "{help}");
    // --no-verify and --backend (which stanza verifies) contradict each other.
    let out = run(common::sesame().args(["rotate", "x", "--no-verify", "--backend", "tpm2"]));
    expect_code(&out, 64);
}

#[test]
fn rotate_ses_credentials_from_an_iam_key() {
    let hsm = SoftHsm::with_aes_key("sesame", "kek");
    let file = hsm.dir().join("ses.sealed");
    let iam = |id: &str, key: &str| {
        format!("aws_access_key_id={id}\naws_secret_access_key={key}\n").into_bytes()
    };
    let out = run_with_stdin(
        sesame(&hsm, None)
            .args(["seal", "--ses", "--ses-region", "eu-west-1", "--out"])
            .arg(&file)
            .args(["--pkcs11", &hsm.uri("kek")]),
        &iam(
            "AKIAOLDOLDOLDOLD1111",
            "old/IAM/secret/key/value/aaaaaaaaaaaaaaa",
        ),
    );
    expect_code(&out, 0);
    let document = |file: &Path| -> serde_json::Value {
        let out = run(sesame(&hsm, None).arg("unseal").arg(file));
        expect_code(&out, 0);
        serde_json::from_slice(&out.stdout).unwrap()
    };
    let old = document(&file);
    // rewrap is the same document, `created` included.
    rewrap(&mut sesame(&hsm, None), &file, &["--keep"], 0);
    assert_eq!(document(&file), old);

    let stderr = rotate(
        &mut sesame(&hsm, None),
        &file,
        &["--ses", "--ses-region", "eu-west-1"],
        &iam(
            "AKIANEWNEWNEWNEW2222",
            "new/IAM/secret/key/value/bbbbbbbbbbbbbbb",
        ),
        0,
    );
    assert!(!stderr.contains("new/IAM"), "{stderr}");
    let new = document(&file);
    assert_eq!(new["username"], "AKIANEWNEWNEWNEW2222");
    assert_eq!(new["host"], "email-smtp.eu-west-1.amazonaws.com");
    assert_ne!(new["password"], old["password"]);
    assert_eq!(new["created"].as_str().unwrap(), header(&file).created);
    assert_eq!(header(&file).generation, 3);
}

#[test]
fn rewrap_keep_after_a_pcr_change_reseals_the_tpm_via_the_hsm() {
    let hsm = SoftHsm::with_aes_key("sesame", "kek");
    let tpm = Swtpm::start();
    let file = seal_with_kek(
        &hsm,
        Some(&tpm),
        "ses.sealed",
        &["--tpm2", "--tpm2-pcrs", "7"],
    );
    tpm.extend_pcr(7); // the update, and the reboot into the new state
    tpm2_unseal(&tpm, &file, 77);

    // The TPM stanza fails, the HSM one unseals; both are sealed again.
    rewrap(&mut sesame(&hsm, Some(&tpm)), &file, &["--keep"], 0);
    assert_eq!(kinds(&file), ["tpm2", "pkcs11"]);
    assert_eq!(header(&file).stanzas[0].field("pcrs"), Some("7"));
    assert_eq!(
        password(&mut tpm.sesame(), &file, &["--backend", "tpm2"]),
        SECRET
    );
    tpm.assert_clean("rewrap after a PCR change");
}
