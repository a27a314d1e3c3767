//! The TPM 2.0 backend against real swtpm instances, one per test.

mod common;

use std::path::{Path, PathBuf};
use std::process::Output;

use common::swtpm::{command_name, Swtpm};
use common::{expect_code, run, run_with_stdin};

const SECRET: &str = "zq7-UNIQUE-smtp-password-4f1e";

fn secret_input() -> Vec<u8> {
    format!("username=AKIAEXAMPLE\npassword={SECRET}\nhost=email-smtp.us-east-1.amazonaws.com\n")
        .into_bytes()
}

fn seal(tpm: &Swtpm, dir: &Path, pcrs: &str) -> PathBuf {
    let path = dir.join(format!("ses-{}.sealed", pcrs.replace(',', "_")));
    let out = run_with_stdin(
        tpm.sesame()
            .args(["seal", "--tpm2", "--tpm2-pcrs", pcrs, "--out"])
            .arg(&path),
        &secret_input(),
    );
    expect_code(&out, 0);
    path
}

fn unseal(tpm: &Swtpm, file: &Path) -> Output {
    run(tpm
        .sesame()
        .args(["unseal", "--format", "value", "--field", "password"])
        .arg(file))
}

fn assert_unseals(tpm: &Swtpm, file: &Path) {
    let out = unseal(tpm, file);
    expect_code(&out, 0);
    assert_eq!(String::from_utf8_lossy(&out.stdout), SECRET);
}

/// A fresh swtpm and a temp dir holding a file sealed to it with `pcrs`.
fn sealed_to_new_tpm(pcrs: &str) -> (Swtpm, tempfile::TempDir, PathBuf) {
    let tpm = Swtpm::start();
    let dir = tempfile::tempdir().unwrap();
    let file = seal(&tpm, dir.path(), pcrs);
    (tpm, dir, file)
}

/// Asserts that unsealing `file` with `tpm` exits `code` with `needle` on
/// stderr; returns the stderr.
fn assert_refused(tpm: &Swtpm, file: &Path, code: i32, needle: &str) -> String {
    let stderr = expect_code(&unseal(tpm, file), code);
    assert!(stderr.contains(needle), "{stderr}");
    stderr
}

/// Runs `unseal EXTRA --tpm2-device DEVICE FILE` with no TPM in the
/// environment.
fn unseal_via(device: &str, extra: &[&str], file: &Path) -> Output {
    run(common::sesame()
        .arg("unseal")
        .args(extra)
        .args(["--tpm2-device", device])
        .arg(file))
}

/// Runs `tpm2 persist-srk` against `tpm`.
fn persist_srk(tpm: &Swtpm) -> Output {
    run(tpm.sesame().args(["tpm2", "persist-srk"]))
}

/// Runs `tpm2 info --json EXTRA`, asserting success; returns the JSON.
fn info_json(tpm: &Swtpm, extra: &[&str]) -> serde_json::Value {
    let out = run(tpm.sesame().args(["tpm2", "info", "--json"]).args(extra));
    expect_code(&out, 0);
    serde_json::from_slice(&out.stdout).unwrap()
}

fn names(codes: &[u32]) -> Vec<&'static str> {
    codes.iter().map(|&c| command_name(c)).collect()
}

/// The TPM commands of one unseal when no SRK is persistent: ReadPublic
/// (absent), CreatePrimary, StartAuthSession, Load, PolicyPCR, Unseal,
/// FlushContext ×2.
const UNSEAL_WITHOUT_PERSISTENT_SRK: [&str; 8] = [
    "ReadPublic",
    "CreatePrimary",
    "StartAuthSession",
    "Load",
    "PolicyPCR",
    "Unseal",
    "FlushContext",
    "FlushContext",
];

/// Asserts that `file` unseals on `tpm` (a logged one) and returns the
/// names of the TPM commands that took.
fn unseal_commands(tpm: &Swtpm, file: &Path) -> Vec<&'static str> {
    let mark = tpm.log_mark();
    assert_unseals(tpm, file);
    names(&tpm.commands_since(mark))
}

#[test]
fn seal_and_unseal_bound_to_the_tpm_alone() {
    let (tpm, _dir, file) = sealed_to_new_tpm("none");
    tpm.assert_clean("seal");
    let text = String::from_utf8_lossy(&std::fs::read(&file).unwrap()).into_owned();
    assert!(text.contains("pcrs: none"), "{text}");
    assert_unseals(&tpm, &file);
    tpm.assert_clean("unseal");
}

#[test]
fn seal_and_unseal_bound_to_pcr_7() {
    let (tpm, _dir, file) = sealed_to_new_tpm("7");
    assert_unseals(&tpm, &file);
    tpm.assert_clean("unseal");
}

#[test]
fn seal_and_unseal_bound_to_pcrs_0_and_7() {
    let tpm = Swtpm::start();
    tpm.extend_pcr(0); // non-zero values, so the policy is not trivially all-zero
    let dir = tempfile::tempdir().unwrap();
    let file = seal(&tpm, dir.path(), "0,7");
    assert_unseals(&tpm, &file);
    // Unrelated PCRs may change freely.
    tpm.extend_pcr(4);
    assert_unseals(&tpm, &file);
    tpm.assert_clean("unseal");
}

#[test]
fn changed_pcr_is_refused_and_named() {
    let (tpm, _dir, file) = sealed_to_new_tpm("0,7");
    tpm.extend_pcr(7);
    let out = unseal(&tpm, &file);
    let stderr = expect_code(&out, 77);
    assert!(stderr.contains("sha256 PCR 7 changed"), "{stderr}");
    assert!(!stderr.contains("PCR 0,7 changed"), "{stderr}");
    assert!(out.stdout.is_empty());
    tpm.assert_clean("refused unseal");
    // Refusing is not sticky and never locks out: asking again is refused the same way.
    assert_refused(&tpm, &file, 77, "PCR 7");
    tpm.assert_clean("second refused unseal");
}

#[test]
fn reboot_resets_pcrs_and_the_file_unseals_again() {
    let mut tpm = Swtpm::start();
    let dir = tempfile::tempdir().unwrap();
    let pcr = seal(&tpm, dir.path(), "7");
    let none = seal(&tpm, dir.path(), "none");
    tpm.extend_pcr(7);
    expect_code(&unseal(&tpm, &pcr), 77);
    tpm.restart();
    assert_unseals(&tpm, &pcr);
    assert_unseals(&tpm, &none);
    tpm.assert_clean("unseal after reboot");
}

#[test]
fn file_moved_to_another_tpm_is_refused_as_different_tpm() {
    let a = Swtpm::start();
    let b = Swtpm::start();
    let dir = tempfile::tempdir().unwrap();
    for pcrs in ["none", "7"] {
        let file = seal(&a, dir.path(), pcrs);
        assert_refused(&b, &file, 77, "sealed to a different TPM");
        b.assert_clean("different-TPM refusal");
        // Also when the other TPM has a persistent SRK of its own.
        expect_code(&persist_srk(&b), 0);
        assert_refused(&b, &file, 77, "sealed to a different TPM");
        b.assert_clean("different-TPM refusal with persistent SRK");
        assert_unseals(&a, &file);
    }
}

#[test]
fn stopped_or_missing_tpm_is_unavailable() {
    let (mut tpm, dir, file) = sealed_to_new_tpm("none");
    let tcti = tpm.tcti();
    tpm.stop();
    let out = unseal_via(&tcti, &[], &file);
    let stderr = expect_code(&out, 69);
    assert!(stderr.contains("does not answer"), "{stderr}");
    let out = unseal_via("device:/dev/no-such-tpm", &[], &file);
    let stderr = expect_code(&out, 69);
    assert!(
        stderr.contains("no TPM device /dev/no-such-tpm"),
        "{stderr}"
    );
    // Sealing to a missing TPM fails the same way and writes nothing.
    let out = run_with_stdin(
        common::sesame()
            .args(["seal", "--tpm2", "--tpm2-device", &tcti, "--out"])
            .arg(dir.path().join("never.sealed")),
        &secret_input(),
    );
    expect_code(&out, 69);
    assert!(!dir.path().join("never.sealed").exists());
}

#[test]
fn persistent_srk_absent_and_present_with_command_counts() {
    let tpm = Swtpm::start_logged();
    let dir = tempfile::tempdir().unwrap();
    let before = seal(&tpm, dir.path(), "7");

    // No persistent SRK: ReadPublic (absent), CreatePrimary, StartAuthSession,
    // Load, PolicyPCR, Unseal, FlushContext ×2.
    assert_eq!(
        unseal_commands(&tpm, &before),
        UNSEAL_WITHOUT_PERSISTENT_SRK
    );
    tpm.assert_clean("unseal without persistent SRK");

    let out = persist_srk(&tpm);
    expect_code(&out, 0);
    assert!(String::from_utf8_lossy(&out.stdout).contains("persisted"));
    // Idempotent for the standard SRK.
    let out = persist_srk(&tpm);
    expect_code(&out, 0);
    assert!(String::from_utf8_lossy(&out.stdout).contains("already persistent"));
    tpm.assert_clean("persist-srk");

    // Persistent SRK: the file sealed before still unseals (same SRK name),
    // with ReadPublic, StartAuthSession, Load, PolicyPCR, Unseal, FlushContext.
    assert_eq!(
        unseal_commands(&tpm, &before),
        [
            "ReadPublic",
            "StartAuthSession",
            "Load",
            "PolicyPCR",
            "Unseal",
            "FlushContext"
        ]
    );
    let after = seal(&tpm, dir.path(), "none");
    assert_eq!(unseal_commands(&tpm, &after).len(), 6);
    tpm.assert_clean("unseal with persistent SRK");

    // Evicting the persistent SRK does not strand files sealed under it.
    tpm.tool("tpm2_evictcontrol", &["-C", "o", "-c", "0x81000001"]);
    assert_unseals(&tpm, &after);
    tpm.assert_clean("unseal after eviction");
}

#[test]
fn persist_srk_refuses_a_handle_holding_another_key() {
    let tpm = Swtpm::start();
    let ctx = tpm.dir().join("rsa.ctx");
    let ctx = ctx.to_str().unwrap();
    tpm.tool(
        "tpm2_createprimary",
        &["-C", "o", "-G", "rsa2048", "-c", ctx],
    );
    tpm.tool("tpm2_evictcontrol", &["-C", "o", "-c", ctx, "0x81000001"]);
    tpm.tool("tpm2_flushcontext", &["-t"]);
    let out = persist_srk(&tpm);
    let stderr = expect_code(&out, 73);
    assert!(stderr.contains("0x81000001"), "{stderr}");
    // Seal and unseal still work: sesame ignores a non-standard key there.
    let dir = tempfile::tempdir().unwrap();
    let file = seal(&tpm, dir.path(), "7");
    assert_unseals(&tpm, &file);
    tpm.assert_clean("unseal beside a foreign persistent key");
    let info = info_json(&tpm, &[]);
    assert_eq!(info["srk"]["state"], "other-key");
}

#[test]
fn tpm2_info_reports_identity_srk_and_pcrs() {
    let tpm = Swtpm::start();
    tpm.extend_pcr(7);
    let info = info_json(&tpm, &["--pcrs", "0,7"]);
    assert_eq!(info["manufacturer"], "IBM");
    assert_eq!(info["srk"]["state"], "absent");
    assert_eq!(info["pcrs"]["values"]["0"], "00".repeat(32));
    assert_ne!(info["pcrs"]["values"]["7"], "00".repeat(32));
    let out = run(tpm.sesame().args(["tpm2", "info"]));
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    expect_code(&out, 0);
    assert!(text.contains("srk: not persistent"), "{text}");
    tpm.assert_clean("info");
}

#[test]
fn inspect_preflight_before_and_after_a_pcr_extend() {
    let (tpm, _dir, file) = sealed_to_new_tpm("0,7");
    let inspect = |json: bool| {
        let mut cmd = tpm.sesame();
        cmd.arg("inspect").arg(&file);
        if json {
            cmd.arg("--json");
        }
        let out = run(&mut cmd);
        expect_code(&out, 0);
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    let text = inspect(false);
    assert!(text.contains("bound to sha256 PCRs 0,7"), "{text}");
    assert!(text.contains("pre-flight: ok"), "{text}");
    tpm.extend_pcr(7);
    let text = inspect(false);
    assert!(
        text.contains("pre-flight: WOULD FAIL: sha256 PCR 7 changed"),
        "{text}"
    );
    let json: serde_json::Value = serde_json::from_str(&inspect(true)).unwrap();
    let pre = &json["stanzas"][0]["preflight"];
    assert_eq!(pre["ok"], false);
    assert_eq!(pre["changed_pcrs"], serde_json::json!([7]));
    tpm.assert_clean("inspect");

    // Another TPM: different TPM. No TPM at all: header only, still exit 0.
    let other = Swtpm::start();
    let out = run(other.sesame().arg("inspect").arg(&file));
    expect_code(&out, 0);
    assert!(String::from_utf8_lossy(&out.stdout).contains("different TPM"));
    let out = run(common::sesame().arg("inspect").arg(&file));
    expect_code(&out, 0);
}

#[test]
fn status_settles_pcr_drift_from_its_one_unseal() {
    let tpm = Swtpm::start_logged();
    let dir = tempfile::tempdir().unwrap();
    let file = seal(&tpm, dir.path(), "7");
    let status = || {
        let mark = tpm.log_mark();
        let out = run(tpm.sesame().arg("status").arg(&file));
        (out, names(&tpm.commands_since(mark)))
    };
    // Unsealed: the policy held, so drift is "unchanged" with no second
    // session (no PCR_Read, one ReadPublic/CreatePrimary).
    let (out, commands) = status();
    expect_code(&out, 0);
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(text.contains("PCR drift: unchanged"), "{text}");
    assert_eq!(commands, UNSEAL_WITHOUT_PERSISTENT_SRK);
    // Refused: the refusal's one PCR_Read names the PCR; nothing more.
    tpm.extend_pcr(7);
    let (out, commands) = status();
    expect_code(&out, 2);
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        text.contains("PCR drift: changed (sha256 PCR 7 changed since sealing)"),
        "{text}"
    );
    let count = |name: &str| commands.iter().filter(|c| **c == name).count();
    assert_eq!(count("ReadPublic"), 1, "{commands:?}");
    assert_eq!(count("CreatePrimary"), 1, "{commands:?}");
    assert_eq!(count("PCR_Read"), 1, "{commands:?}");
    tpm.assert_clean("status");
}

#[test]
fn secret_never_appears_in_verbose_output() {
    let tpm = Swtpm::start();
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("v.sealed");
    let out = run_with_stdin(
        tpm.sesame()
            .args(["-vvv", "seal", "--tpm2", "--tpm2-pcrs", "7", "--out"])
            .arg(&file),
        &secret_input(),
    );
    expect_code(&out, 0);
    let mut logs = String::from_utf8_lossy(&out.stderr).into_owned();
    let out = run(tpm
        .sesame()
        .args(["-vvv", "unseal", "--format", "value", "--field", "password"])
        .arg(&file));
    expect_code(&out, 0);
    assert_eq!(String::from_utf8_lossy(&out.stdout), SECRET);
    logs.push_str(&String::from_utf8_lossy(&out.stderr));
    tpm.extend_pcr(7);
    let out = run(tpm.sesame().args(["-vvv", "unseal"]).arg(&file));
    expect_code(&out, 77);
    logs.push_str(&String::from_utf8_lossy(&out.stdout));
    logs.push_str(&String::from_utf8_lossy(&out.stderr));
    assert!(!logs.is_empty());
    assert!(!logs.contains(SECRET), "secret in logs: {logs}");
    assert!(!logs.contains("AKIAEXAMPLE"), "username in logs: {logs}");
}

#[test]
fn bad_flags_and_tampered_stanzas_have_their_exit_codes() {
    let tpm = Swtpm::start();
    let dir = tempfile::tempdir().unwrap();
    for (pcrs, bank) in [("24", "sha256"), ("7", "md5")] {
        let out = run_with_stdin(
            tpm.sesame()
                .args([
                    "seal",
                    "--tpm2",
                    "--tpm2-pcrs",
                    pcrs,
                    "--tpm2-pcr-bank",
                    bank,
                    "--out",
                ])
                .arg(dir.path().join("x.sealed")),
            &secret_input(),
        );
        expect_code(&out, 78);
    }
    let out = unseal_via("carrier-pigeon:coo", &[], &seal(&tpm, dir.path(), "7"));
    expect_code(&out, 78);

    // Editing the sealed PCR values cannot widen the policy: the stanza no
    // longer matches its policy digest (65), before any TPM command.
    let file = seal(&tpm, dir.path(), "0,7");
    let mut bytes = std::fs::read(&file).unwrap();
    let zero = format!("0={}", "00".repeat(32));
    let forged = format!("0={}", "11".repeat(32));
    // Same length, header only: the binary body is untouched.
    let at = bytes
        .windows(zero.len())
        .position(|w| w == zero.as_bytes())
        .expect("sealed PCR 0 value in the header");
    bytes[at..at + forged.len()].copy_from_slice(forged.as_bytes());
    std::fs::write(&file, &bytes).unwrap();
    assert_refused(&tpm, &file, 65, "policy-digest");
    tpm.assert_clean("tampered stanza");
}

#[test]
fn backend_filter_with_a_missing_tpm_is_unavailable() {
    let dir = tempfile::tempdir().unwrap();
    let tpm = Swtpm::start();
    let file = seal(&tpm, dir.path(), "none");
    let out = unseal_via("device:/dev/no-such-tpm", &["--backend", "tpm2"], &file);
    expect_code(&out, 69);
    assert_unseals(&tpm, &file);
}
