//! Black-box tests of `seal`, `unseal` and `inspect`: every output format and
//! the error cases of CONTRACT.md, against a real SoftHSM token per test.

mod common;

use std::fs;
use std::path::{Path, PathBuf};
use std::process::Output;

use common::softhsm::SoftHsm;
use common::{expect_code, run, run_with_stdin};

const SECRET: &str = "Zq9-known-SECRET-value-7f3";
const SES: &str = "username=AKIAIOSFODNN7EXAMPLE\npassword=Zq9-known-SECRET-value-7f3\nhost=email-smtp.eu-west-1.amazonaws.com\nport=587\nregion=eu-west-1\n";

/// A token with an AES key and a sealed SES document.
struct Fixture {
    hsm: SoftHsm,
    dir: tempfile::TempDir,
    sealed: PathBuf,
}

impl Fixture {
    fn new() -> Self {
        let hsm = SoftHsm::with_aes_key("sesame-test", "kek");
        let dir = tempfile::tempdir().unwrap();
        let sealed = dir.path().join("ses.sealed");
        let out = seal(
            &hsm,
            &["--name", "ses test"],
            &sealed,
            &hsm.uri("kek"),
            SES.as_bytes(),
        );
        expect_code(&out, 0);
        Self { hsm, dir, sealed }
    }

    fn unseal(&self, file: &Path, extra: &[&str]) -> std::process::Output {
        run(self.hsm.command().arg("unseal").arg(file).args(extra))
    }
}

/// Runs `seal FLAGS --out OUT --pkcs11 URI` on `hsm` with `stdin`.
fn seal(hsm: &SoftHsm, flags: &[&str], out: &Path, uri: &str, stdin: &[u8]) -> Output {
    run_with_stdin(
        hsm.command()
            .arg("seal")
            .args(flags)
            .arg("--out")
            .arg(out)
            .args(["--pkcs11", uri]),
        stdin,
    )
}

/// The generation recorded in the header of the sealed file at `path`.
fn generation(path: &Path) -> u64 {
    sesame::format::parse(&fs::read(path).unwrap())
        .unwrap()
        .header
        .generation
}

/// Asserts `stderr` is one `sesame: …` line naming `file`, without [`SECRET`].
fn one_line_naming(stderr: &str, file: &Path) {
    assert_eq!(stderr.lines().count(), 1, "one line expected: {stderr}");
    assert!(stderr.starts_with("sesame: "), "{stderr}");
    assert!(
        stderr.contains(&*file.to_string_lossy()),
        "must name {}: {stderr}",
        file.display()
    );
    assert!(!stderr.contains(SECRET), "secret leaked: {stderr}");
}

#[test]
fn seal_then_unseal_in_every_format() {
    let f = Fixture::new();
    let sealed = fs::read(&f.sealed).unwrap();
    assert!(!sealed.windows(SECRET.len()).any(|w| w == SECRET.as_bytes()));
    assert_eq!(common::mode(&f.sealed), 0o600);

    let out = f.unseal(&f.sealed, &[]);
    expect_code(&out, 0);
    let json: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(json["password"], SECRET);
    assert_eq!(json["port"], "587");

    let out = f.unseal(&f.sealed, &["--format", "env", "--env-prefix", "SES_"]);
    expect_code(&out, 0);
    let env = String::from_utf8(out.stdout).unwrap();
    assert!(
        env.contains(&format!("SES_PASSWORD=\"{SECRET}\"\n")),
        "{env}"
    );
    // A POSIX shell reads the env format back exactly.
    let envfile = f.dir.path().join("env");
    fs::write(&envfile, &env).unwrap();
    let sh = std::process::Command::new("sh")
        .arg("-c")
        .arg(". \"$1\"; printf %s \"$SES_PASSWORD\"")
        .arg("sh")
        .arg(&envfile)
        .output()
        .unwrap();
    assert_eq!(String::from_utf8(sh.stdout).unwrap(), SECRET);

    let out = f.unseal(&f.sealed, &["--format", "exim"]);
    expect_code(&out, 0);
    assert_eq!(
        String::from_utf8(out.stdout).unwrap(),
        format!("email-smtp.eu-west-1.amazonaws.com:AKIAIOSFODNN7EXAMPLE:{SECRET}\n")
    );
    let out = f.unseal(
        &f.sealed,
        &["--format", "exim", "--exim-host", "*.amazonaws.com"],
    );
    assert!(String::from_utf8(out.stdout)
        .unwrap()
        .starts_with("*.amazonaws.com:AKIA"));

    let out = f.unseal(&f.sealed, &["--format", "value", "--field", "password"]);
    expect_code(&out, 0);
    assert_eq!(out.stdout, SECRET.as_bytes());

    let out = f.unseal(&f.sealed, &["--format", "value"]);
    expect_code(&out, 64);
    let out = f.unseal(&f.sealed, &["--format", "value", "--field", "nope"]);
    let stderr = expect_code(&out, 64);
    assert!(stderr.contains("nope"), "{stderr}");

    let out = run(common::sesame().arg("inspect").arg(&f.sealed));
    expect_code(&out, 0);
    let text = String::from_utf8(out.stdout).unwrap();
    assert!(
        text.contains("name: ses test") && text.contains("stanza 1: pkcs11"),
        "{text}"
    );
}

#[test]
fn output_file_is_atomic_private_and_on_tmpfs_only() {
    let f = Fixture::new();
    let run_dir = common::tmpfs_dir();
    let target = run_dir.path().join("passwd.client");
    let t = target.to_str().unwrap();
    let out = f.unseal(
        &f.sealed,
        &["--format", "exim", "--output", t, "--mode", "0640"],
    );
    expect_code(&out, 0);
    assert!(out.stdout.is_empty());
    assert_eq!(common::mode(&target), 0o640);
    assert!(fs::read_to_string(&target)
        .unwrap()
        .ends_with(&format!(":{SECRET}\n")));

    // Exists: refused, old content kept; --force replaces.
    fs::write(&target, "old").unwrap();
    let out = f.unseal(&f.sealed, &["--output", t]);
    one_line_naming(&expect_code(&out, 73), &target);
    assert_eq!(fs::read_to_string(&target).unwrap(), "old");
    let out = f.unseal(&f.sealed, &["--output", t, "--force"]);
    expect_code(&out, 0);
    assert!(fs::read_to_string(&target).unwrap().contains(SECRET));

    // Group by name.
    let g = run_dir.path().join("grouped");
    let out = f.unseal(
        &f.sealed,
        &[
            "--output",
            g.to_str().unwrap(),
            "--mode",
            "0640",
            "--group",
            "root",
        ],
    );
    expect_code(&out, 0);
    let out = f.unseal(
        &f.sealed,
        &[
            "--output",
            g.to_str().unwrap(),
            "--force",
            "--group",
            "no-such-group-x",
        ],
    );
    expect_code(&out, 64);

    // Persistent destination: refused before touching the token; nothing written.
    let disk = tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).unwrap();
    if !sesame::fsio::is_memory_fs(disk.path()) {
        let p = disk.path().join("plain.json");
        let out = f.unseal(&f.sealed, &["--output", p.to_str().unwrap()]);
        one_line_naming(&expect_code(&out, 73), &p);
        assert_eq!(fs::read_dir(disk.path()).unwrap().count(), 0);
        let out = f.unseal(
            &f.sealed,
            &["--output", p.to_str().unwrap(), "--allow-persistent"],
        );
        expect_code(&out, 0);
        assert_eq!(common::mode(&p), 0o600);
    }

    // Modes readable by others are refused as usage errors.
    let out = f.unseal(
        &f.sealed,
        &[
            "--output",
            run_dir.path().join("w").to_str().unwrap(),
            "--mode",
            "0644",
        ],
    );
    expect_code(&out, 64);
    // No temp files left behind by any of the above.
    let names: Vec<String> = fs::read_dir(run_dir.path())
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    assert!(
        names.iter().all(|n| !n.starts_with(".sesame-")),
        "{names:?}"
    );
}

#[test]
fn tampering_is_detected_and_reported_as_65() {
    let f = Fixture::new();
    let bytes = fs::read(&f.sealed).unwrap();
    let header_len = sesame::format::parse(&bytes).unwrap().header_bytes.len();
    let name_at = String::from_utf8_lossy(&bytes[..header_len])
        .find("name: ses test")
        .unwrap();

    // A header byte changed (the name, which no backend reads).
    let mut header_flip = bytes.clone();
    header_flip[name_at + 6] = b'S';
    let p = f.dir.path().join("header-flip.sealed");
    fs::write(&p, &header_flip).unwrap();
    let stderr = expect_code(&f.unseal(&p, &[]), 65);
    one_line_naming(&stderr, &p);
    assert!(stderr.contains("modified"), "{stderr}");

    // A payload byte flipped.
    let mut body_flip = bytes.clone();
    let last = body_flip.len() - 1;
    body_flip[last] ^= 1;
    let p = f.dir.path().join("body-flip.sealed");
    fs::write(&p, &body_flip).unwrap();
    one_line_naming(&expect_code(&f.unseal(&p, &[]), 65), &p);

    // Truncated, empty, wrong magic, future version, oversized.
    let cases: Vec<(&str, Vec<u8>)> = vec![
        ("truncated", bytes[..bytes.len() - 30].to_vec()),
        ("truncated-header", bytes[..header_len - 3].to_vec()),
        ("empty", Vec::new()),
        (
            "magic",
            [b"age-encryption.org/v1\n".as_slice(), &bytes].concat(),
        ),
        (
            "future",
            String::from_utf8_lossy(&bytes[..header_len])
                .replacen("v1\n", "v9\n", 1)
                .into_bytes(),
        ),
        (
            "oversized",
            [bytes.clone(), vec![0u8; sesame::format::MAX_FILE_LEN]].concat(),
        ),
    ];
    for (name, content) in cases {
        let p = f.dir.path().join(format!("{name}.sealed"));
        fs::write(&p, content).unwrap();
        let stderr = expect_code(&f.unseal(&p, &[]), 65);
        one_line_naming(&stderr, &p);
        if name == "future" {
            assert!(stderr.contains("version 9"), "{stderr}");
        }
    }

    // Missing file: named once, not twice.
    let p = f.dir.path().join("missing.sealed");
    let stderr = expect_code(&f.unseal(&p, &[]), 66);
    one_line_naming(&stderr, &p);
    assert_eq!(stderr.matches(&*p.to_string_lossy()).count(), 1, "{stderr}");
}

#[test]
fn seal_is_atomic_and_refuses_to_overwrite() {
    let f = Fixture::new();
    let before = fs::read(&f.sealed).unwrap();
    let uri = f.hsm.uri("kek");

    // Exists without --force: 73, file untouched.
    let out = seal(&f.hsm, &[], &f.sealed, &uri, SES.as_bytes());
    one_line_naming(&expect_code(&out, 73), &f.sealed);
    assert_eq!(fs::read(&f.sealed).unwrap(), before);

    // A failing --force (bad input) leaves the old file and no temp file.
    let out = seal(&f.hsm, &["--force"], &f.sealed, &uri, b"bad-name!=x\n");
    expect_code(&out, 65);
    assert_eq!(fs::read(&f.sealed).unwrap(), before);
    // A failing --force (key missing) too.
    let out = seal(
        &f.hsm,
        &["--force"],
        &f.sealed,
        &f.hsm.uri("absent"),
        SES.as_bytes(),
    );
    assert_ne!(out.status.code(), Some(0));
    assert_eq!(fs::read(&f.sealed).unwrap(), before);
    let leftovers = fs::read_dir(f.dir.path()).unwrap().count();
    assert_eq!(leftovers, 1, "only the sealed file may be in the directory");

    // --force succeeds and carries the generation on.
    let out = seal(&f.hsm, &["--force"], &f.sealed, &uri, SES.as_bytes());
    expect_code(&out, 0);
    assert_eq!(generation(&f.sealed), 2);
}

#[test]
fn bad_secret_input_is_rejected_without_echoing_it() {
    let hsm = SoftHsm::with_aes_key("sesame-test", "kek");
    let dir = tempfile::tempdir().unwrap();
    let out_path = dir.path().join("x.sealed");
    // Mistyped lines put (part of) a secret where the field name should be:
    // before the first '=', with or without ':' or spaces, or a base64 value
    // whose '=' padding makes it look like KEY=VALUE.
    let inputs: [(&[u8], i32, &str); 9] = [
        (b"", 65, ""),
        (b"1password=Zq9-known-SECRET-value-7f3\n", 65, ""),
        (b"{\"pass word\":\"Zq9-known-SECRET-value-7f3\"}", 65, ""),
        (
            b"{\"a\":\"Zq9-known-SECRET-value-7f3\",\"a\":\"x\"}",
            65,
            "",
        ),
        (b"Zq9-known-SECRET-value-7f3", 65, ""),
        (
            b"username=u\npassword: Zq9-known-SECRET-value-7f3=x\n",
            65,
            "line 2: the text before '=' is not a valid field name",
        ),
        (
            b"password Zq9-known-SECRET-value-7f3=\n",
            65,
            "line 1: the text before '=' is not a valid field name",
        ),
        (
            b"username=u\n\nZq9+known/SECRET/value/7f3A==\n",
            65,
            "line 3: the text before '=' is not a valid field name",
        ),
        (
            b"{\"username\":\"u\",\"Zq9-known-SECRET-value-7f3\":\"x\"}",
            65,
            "the 2nd key of the JSON object is not a valid field name",
        ),
    ];
    for (input, code, message) in inputs {
        for log_format in ["text", "json"] {
            let out = seal(
                &hsm,
                &["-vvv", "--log-format", log_format],
                &out_path,
                &hsm.uri("kek"),
                input,
            );
            let stderr = expect_code(&out, code);
            for leak in [SECRET, "SECRET", "known"] {
                assert!(!stderr.contains(leak), "{stderr}");
            }
            assert!(stderr.contains(message), "{stderr}");
            if log_format == "json" {
                // The failure is audited, with the same (secret-free) reason.
                assert!(
                    stderr.lines().any(|l| l.contains("\"sesame::audit\"")
                        && l.contains("\"outcome\":\"failed\"")
                        && l.contains(message)),
                    "{stderr}"
                );
            }
            assert!(!out_path.exists());
        }
    }
    // No backend at all is a usage error.
    let out = run_with_stdin(
        common::sesame().args(["seal", "--out"]).arg(&out_path),
        SES.as_bytes(),
    );
    expect_code(&out, 64);
}

#[test]
fn exim_format_refuses_values_that_break_its_lines() {
    let hsm = SoftHsm::with_aes_key("sesame-test", "kek");
    let dir = tempfile::tempdir().unwrap();
    for (name, input) in [
        ("colon", r#"{"username":"u","password":"Zq9-known:SECRET"}"#),
        (
            "newline",
            r#"{"username":"u","password":"Zq9-known\nSECRET"}"#,
        ),
    ] {
        let sealed = dir.path().join(format!("{name}.sealed"));
        let out = seal(&hsm, &[], &sealed, &hsm.uri("kek"), input.as_bytes());
        expect_code(&out, 0);
        let out = run(hsm
            .command()
            .arg("unseal")
            .arg(&sealed)
            .args(["--format", "exim"]));
        let stderr = expect_code(&out, 65);
        assert!(
            stderr.contains("password") && !stderr.contains("SECRET"),
            "{stderr}"
        );
        assert!(out.stdout.is_empty());
        // JSON still carries it faithfully.
        let out = run(hsm.command().arg("unseal").arg(&sealed));
        expect_code(&out, 0);
    }
}

#[test]
fn secret_and_pin_never_appear_in_verbose_output() {
    let f = Fixture::new();
    let pin = f.hsm.pin();
    let checks = |out: &std::process::Output, allow_stdout: bool| {
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(
            !stderr.contains(SECRET) && !stderr.contains(pin),
            "stderr leaked: {stderr}"
        );
        if !allow_stdout {
            let stdout = String::from_utf8_lossy(&out.stdout);
            assert!(
                !stdout.contains(SECRET) && !stdout.contains(pin),
                "stdout leaked"
            );
        }
    };
    for format in ["--log-format=text", "--log-format=json"] {
        let run_dir = common::tmpfs_dir();
        let target = run_dir.path().join("o");
        let out = f.unseal(
            &f.sealed,
            &["-vvv", format, "--output", target.to_str().unwrap()],
        );
        expect_code(&out, 0);
        checks(&out, false);
        // Failure: tampered body.
        let mut bytes = fs::read(&f.sealed).unwrap();
        let last = bytes.len() - 1;
        bytes[last] ^= 1;
        let bad = f.dir.path().join("bad.sealed");
        fs::write(&bad, &bytes).unwrap();
        let out = f.unseal(&bad, &["-vvv", format]);
        expect_code(&out, 65);
        checks(&out, false);
        // Sealing with maximum verbosity.
        let again = f.dir.path().join(format!("again{format}.sealed"));
        let out = run_with_stdin(
            f.hsm
                .command()
                .args(["-vvv", format, "seal", "--out"])
                .arg(&again)
                .args(["--pkcs11", &f.hsm.uri("kek")]),
            SES.as_bytes(),
        );
        expect_code(&out, 0);
        checks(&out, false);
    }
}

#[test]
fn core_dumps_are_disabled_before_secrets_are_read() {
    // `exec` replaces sesame with the command, which inherits sesame's
    // resource limits: the soft and hard core-file limits must both be 0.
    let f = Fixture::new();
    let out = run(f.hsm.command().arg("exec").arg(&f.sealed).args([
        "--",
        "sh",
        "-c",
        "ulimit -S -c; ulimit -H -c",
    ]));
    expect_code(&out, 0);
    assert_eq!(String::from_utf8(out.stdout).unwrap(), "0\n0\n");
}

#[test]
fn a_file_with_no_usable_stanza_says_which_types_it_has() {
    // Only a stanza type from the future: nothing here can unwrap it.
    use sesame::envelope::{encrypt, now_rfc3339};
    use sesame::format::{encode, encode_header, Aead, Header, Stanza};
    let key = sesame::secret::DataKey::generate().unwrap();
    let header = Header {
        created: now_rfc3339(),
        generation: 1,
        name: None,
        aead: Aead::Aes256Gcm,
        stanzas: vec![Stanza::new("x-future").with("k", "v")],
    };
    let header_bytes = encode_header(&header).unwrap();
    let (nonce, ciphertext) = encrypt(&key, &header_bytes, br#"{"a":"b"}"#).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("future.sealed");
    fs::write(&path, encode(&header_bytes, &nonce, &ciphertext)).unwrap();
    let out = run(common::sesame().arg("unseal").arg(&path));
    let stderr = expect_code(&out, 69);
    one_line_naming(&stderr, &path);
    assert!(
        stderr.contains("no usable key stanza") && stderr.contains("x-future"),
        "{stderr}"
    );
}

#[test]
fn seal_force_replaces_in_place_and_a_bad_name_is_refused_first() {
    use std::os::unix::fs::{MetadataExt as _, PermissionsExt as _};
    let f = Fixture::new();
    let uri = f.hsm.uri("kek");
    // The file is reached through a symlink and has its own mode.
    fs::set_permissions(&f.sealed, fs::Permissions::from_mode(0o640)).unwrap();
    let link = f.dir.path().join("link.sealed");
    std::os::unix::fs::symlink(&f.sealed, &link).unwrap();
    let out = seal(&f.hsm, &["--force"], &link, &uri, SES.as_bytes());
    expect_code(&out, 0);
    assert!(fs::symlink_metadata(&link)
        .unwrap()
        .file_type()
        .is_symlink());
    let meta = fs::metadata(&f.sealed).unwrap();
    assert_eq!(meta.mode() & 0o777, 0o640);
    assert_eq!(generation(&f.sealed), 2);

    // A name that cannot be stored is refused before the secret is read.
    let fresh = f.dir.path().join("fresh.sealed");
    let out = seal(
        &f.hsm,
        &["--name", "two\tparts"],
        &fresh,
        &uri,
        SES.as_bytes(),
    );
    let stderr = expect_code(&out, 64);
    assert!(stderr.contains("--name"), "{stderr}");
    assert!(!fresh.exists());
}
