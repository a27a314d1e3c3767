//! Black-box tests of the SES toolkit: `ses derive-password`, `ses check`,
//! `seal --ses`, `status`, and the audit events they emit. Every SMTP test
//! starts its own loopback stand-in (tests/fixtures/smtp_standin.py) with its
//! own throwaway CA, and kills it on drop.

mod common;

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use common::standin::StandIn;
use common::{expect_code, run, run_with_stdin, sesame};

const USER: &str = "AKIAIOSFODNN7EXAMPLE";

/// `ses check --stdin` arguments pointing at `standin`, trusting its CA if
/// `with_ca`.
fn check_args(standin: &StandIn, with_ca: bool) -> Vec<String> {
    let mut args = vec![
        "ses".to_owned(),
        "check".into(),
        "--stdin".into(),
        "--region".into(),
        "eu-west-1".into(),
        "--host".into(),
        "127.0.0.1".into(),
        "--port".into(),
        standin.port().to_string(),
        "--timeout".into(),
        "10".into(),
    ];
    if with_ca {
        args.push("--ca-file".into());
        args.push(standin.ca().display().to_string());
    }
    args
}

/// Runs `ses check --stdin` against `standin` (see [`check_args`]) with
/// `extra` flags, [`USER`] and `password` on stdin.
fn check_password(standin: &StandIn, with_ca: bool, password: &str, extra: &[&str]) -> Output {
    run_with_stdin(
        sesame().args(check_args(standin, with_ca)).args(extra),
        format!("username={USER}\npassword={password}\n").as_bytes(),
    )
}

/// AWS's algorithm written again, independently, in Python's hmac; the secret
/// goes over stdin, never argv.
fn python_derive(secret: &str, region: &str) -> String {
    let script = "import sys, hmac, hashlib, base64\n\
        region = sys.argv[1]\n\
        secret = sys.stdin.read()\n\
        def sign(k, m): return hmac.new(k, m.encode(), hashlib.sha256).digest()\n\
        k = sign(('AWS4' + secret).encode(), '11111111')\n\
        for m in (region, 'ses', 'aws4_request', 'SendRawEmail'): k = sign(k, m)\n\
        print(base64.b64encode(bytes([4]) + k).decode())\n";
    let out = run_with_stdin(
        Command::new("python3").args(["-c", script, region]),
        secret.as_bytes(),
    );
    assert!(
        out.status.success(),
        "python3: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout)
        .expect("UTF-8")
        .trim()
        .to_owned()
}

/// A random secret access key shaped like AWS's (40 base64 characters).
fn random_secret() -> String {
    const ALPHABET: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut bytes = [0u8; 40];
    getrandom::getrandom(&mut bytes).expect("random");
    bytes
        .iter()
        .map(|b| ALPHABET[usize::from(b % 64)] as char)
        .collect()
}

fn derive(secret: &str, region: &str) -> Output {
    run_with_stdin(
        sesame().args(["ses", "derive-password", "--region", region]),
        secret.as_bytes(),
    )
}

fn stdout(out: &Output) -> String {
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Asserts that stdout starts with the `status` summary `prefix`.
fn assert_summary(out: &Output, prefix: &str) {
    assert!(stdout(out).starts_with(prefix), "{}", stdout(out));
}

#[test]
fn derive_password_matches_terraform_vectors() {
    // terraform-provider-aws TestSESSMTPPasswordFromSecretKeySigV4: an
    // implementation known to authenticate against SES.
    let cases = [
        (
            "eu-central-1",
            "some+secret+key",
            "BMXhUYlu5Z3gSXVQORxlVa7XPaz91aGWdfHxvkOZdWZ2",
        ),
        (
            "us-west-1",
            "another+secret+key",
            "BKVmjjMDFk/qqw8EROW99bjCS65PF8WKvK5bSr4Y6EqF",
        ),
    ];
    for (region, secret, expected) in cases {
        // With a trailing newline, as `echo` or a file would give it.
        let out = derive(&format!("{secret}\n"), region);
        let stderr = expect_code(&out, 0);
        assert_eq!(stdout(&out), format!("{expected}\n"));
        assert!(stderr.is_empty(), "{stderr}");
    }
}

#[test]
fn derive_password_matches_an_independent_implementation() {
    for region in ["us-east-1", "eu-west-1", "ap-southeast-2", "us-gov-west-1"] {
        let secret = random_secret();
        let out = derive(&secret, region);
        expect_code(&out, 0);
        assert_eq!(
            stdout(&out).trim(),
            python_derive(&secret, region),
            "{region}"
        );
    }
}

#[test]
fn derive_password_rejects_unknown_regions_with_the_list() {
    let out = derive("some+secret+key", "xx-nowhere-1");
    let stderr = expect_code(&out, 64);
    assert!(
        stderr.starts_with("sesame: ses derive-password: \"xx-nowhere-1\" is not a region"),
        "{stderr}"
    );
    assert!(
        stderr.contains("us-east-1") && stderr.contains("eu-central-1"),
        "{stderr}"
    );
    assert!(stdout(&out).is_empty());
    expect_code(&derive("some+secret+key", "not a region"), 64);
    // A region added by AWS after this release can be accepted explicitly.
    let out = run_with_stdin(
        sesame().args([
            "ses",
            "derive-password",
            "--region",
            "xx-nowhere-1",
            "--any-region",
        ]),
        b"some+secret+key",
    );
    expect_code(&out, 0);
    assert_eq!(
        stdout(&out).trim(),
        python_derive("some+secret+key", "xx-nowhere-1")
    );
}

#[test]
fn derive_password_needs_a_secret_on_stdin() {
    let out = derive("", "eu-west-1");
    let stderr = expect_code(&out, 65);
    assert!(stderr.contains("no secret access key"), "{stderr}");
    let out = derive("has space\n", "eu-west-1");
    let stderr = expect_code(&out, 65);
    assert!(!stderr.contains("has space"), "{stderr}");
    // There is no way to pass the secret as an argument.
    expect_code(
        &run(sesame().args([
            "ses",
            "derive-password",
            "--region",
            "eu-west-1",
            "--secret",
            "x",
        ])),
        64,
    );
}

#[test]
fn check_authenticates_without_sending() {
    let standin = StandIn::start(USER, "smtp-password-1");
    let out = check_password(&standin, true, "smtp-password-1", &[]);
    expect_code(&out, 0);
    assert!(
        stdout(&out).starts_with("ok: authenticated to 127.0.0.1:"),
        "{}",
        stdout(&out)
    );
    // Neither the password nor the user name (the access key id) is printed.
    assert!(!stdout(&out).contains("smtp-password-1"));
    assert!(!stdout(&out).contains(USER), "{}", stdout(&out));
    let auths = standin.records("auth");
    assert_eq!(auths.len(), 1, "{auths:?}");
    assert_eq!(auths[0]["ok"], true);
    assert!(
        standin.records("message").is_empty(),
        "a check must not send mail"
    );
}

#[test]
fn check_derives_the_password_from_an_access_key() {
    let secret = random_secret();
    let standin = StandIn::start(USER, &python_derive(&secret, "eu-west-1"));
    let input = format!(r#"{{"access_key_id":"{USER}","secret_access_key":"{secret}"}}"#);
    let out = run_with_stdin(sesame().args(check_args(&standin, true)), input.as_bytes());
    expect_code(&out, 0);
    assert_eq!(standin.records("auth")[0]["ok"], true);
}

#[test]
fn check_wrong_password_is_77_and_audited_once_in_json() {
    let standin = StandIn::start(USER, "right");
    let out = check_password(&standin, true, "wrong-secret", &["--log-format", "json"]);
    let stderr = expect_code(&out, 77);
    assert!(!stderr.contains("wrong-secret"), "{stderr}");
    let audit = audit_records(&stderr);
    assert_eq!(audit.len(), 1, "{stderr}");
    assert_eq!(audit[0]["event"], "ses-check");
    assert_eq!(audit[0]["outcome"], "failed");
    assert!(audit[0]["endpoint"]
        .as_str()
        .unwrap_or("")
        .starts_with("127.0.0.1:"));
    assert!(
        error_line(&stderr).contains("refused the credentials"),
        "{stderr}"
    );
    assert_eq!(standin.records("auth")[0]["ok"], false);
}

#[test]
fn check_in_text_mode_reports_a_failure_once() {
    let standin = StandIn::start(USER, "right");
    let out = check_password(&standin, true, "wrong", &[]);
    let stderr = expect_code(&out, 77);
    assert_eq!(stderr.lines().count(), 1, "{stderr}");
}

#[test]
fn check_untrusted_certificate_is_a_tls_failure() {
    let standin = StandIn::start(USER, "pw");
    let out = check_password(&standin, false, "pw", &[]);
    let stderr = expect_code(&out, 76);
    assert!(stderr.contains("TLS with 127.0.0.1:"), "{stderr}");
    // The password never crossed the wire: no AUTH happened.
    assert!(standin.records("auth").is_empty());
}

#[test]
fn check_nothing_listening_is_unreachable() {
    // A port that was free a moment ago and has nothing listening now.
    let port = TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("free port")
        .port();
    let out = run_with_stdin(
        sesame().args([
            "ses",
            "check",
            "--stdin",
            "--host",
            "127.0.0.1",
            "--port",
            &port.to_string(),
        ]),
        b"username=u\npassword=p\nregion=eu-west-1\n",
    );
    let stderr = expect_code(&out, 69);
    assert!(stderr.contains("unreachable"), "{stderr}");
}

#[test]
fn check_usage_errors() {
    let input = b"username=u\npassword=p\nregion=eu-west-1\n";
    // SES's implicit-TLS ports are refused up front.
    let out = run_with_stdin(
        sesame().args(["ses", "check", "--stdin", "--port", "465"]),
        input,
    );
    expect_code(&out, 64);
    // A CA file without certificates.
    let dir = tempfile::tempdir().expect("temp dir");
    let ca = dir.path().join("ca.pem");
    std::fs::write(&ca, "not a certificate\n").expect("write");
    let out = run_with_stdin(
        sesame()
            .args([
                "ses",
                "check",
                "--stdin",
                "--host",
                "127.0.0.1",
                "--port",
                "9",
                "--ca-file",
            ])
            .arg(&ca),
        input,
    );
    expect_code(&out, 64);
    // Neither a file nor --stdin.
    expect_code(&run(sesame().args(["ses", "check"])), 64);
}

/// A PKCS#11 URI whose module does not exist: `seal` can build the backend,
/// so these tests reach the SES input checks, which must fail before any
/// wrapping is attempted.
const NOWHERE_URI: &str = "pkcs11:token=nowhere;object=kek?module-path=/nonexistent/libnone.so";

/// Runs `seal --ses --pkcs11 NOWHERE_URI --out FILE FLAGS` with `input` on stdin.
fn seal_ses_nowhere(out_file: &Path, flags: &[&str], input: &[u8]) -> Output {
    run_with_stdin(
        sesame()
            .args(["seal", "--ses", "--pkcs11", NOWHERE_URI, "--out"])
            .arg(out_file)
            .args(flags),
        input,
    )
}

#[test]
fn seal_ses_rejects_bad_input_before_wrapping() {
    let dir = tempfile::tempdir().expect("temp dir");
    let out_file = dir.path().join("ses.sealed");
    let cases: [(&[&str], &str, i32, &str); 5] = [
        (
            &["--ses-region", "eu-west-1"],
            "access_key_id=AKIAIOSFODNN7EXAMPLE\n",
            65,
            "together",
        ),
        (
            &["--ses-region", "eu-west-1"],
            "username=u\npassword=SECRETVALUE\nnote=SECRETVALUE\n",
            65,
            "unexpected field \"note\"",
        ),
        (
            &["--ses-region", "xx-nowhere-1"],
            "username=u\npassword=SECRETVALUE\n",
            64,
            "us-east-1",
        ),
        (
            &[],
            "username=u\npassword=SECRETVALUE\n",
            65,
            "missing region",
        ),
        (
            &["--ses-region", "eu-west-1", "--ses-endpoint", "bad host"],
            "username=u\npassword=SECRETVALUE\n",
            64,
            "not a host name",
        ),
    ];
    for (flags, input, code, needle) in cases {
        let out = seal_ses_nowhere(&out_file, flags, input.as_bytes());
        let stderr = expect_code(&out, code);
        assert!(stderr.contains(needle), "{needle}: {stderr}");
        assert!(!stderr.contains("SECRETVALUE"), "{stderr}");
        assert!(!out_file.exists());
    }
    // --ses-region without --ses is a usage error.
    let out = run_with_stdin(
        sesame()
            .args([
                "seal",
                "--pkcs11",
                NOWHERE_URI,
                "--ses-region",
                "eu-west-1",
                "--out",
            ])
            .arg(&out_file),
        b"username=u\npassword=p\n",
    );
    expect_code(&out, 64);
}

/// A secret-looking value, as if a credential had been pasted into the wrong
/// field.
const LEAK: &str = "wJalrXUtnFEMI/K7MDENG+bPxRfiCYLEAKEDKEY";

/// Documents with [`LEAK`] in the region, host and port fields, and the field
/// each error must name instead.
fn leaky_documents() -> [(String, &'static str); 3] {
    [
        (format!("username=u\npassword=p\nregion={LEAK}\n"), "region"),
        (
            format!("username=u\npassword=p\nregion=eu-west-1\nhost={LEAK}\n"),
            "host",
        ),
        (
            format!("username=u\npassword=p\nregion=eu-west-1\nport={LEAK}\n"),
            "port",
        ),
    ]
}

/// The one `sesame: …` error line of `stderr`, asserting there is exactly one.
fn error_line(stderr: &str) -> &str {
    let errors: Vec<&str> = stderr
        .lines()
        .filter(|l| l.starts_with("sesame: "))
        .collect();
    assert_eq!(errors.len(), 1, "{stderr}");
    errors[0]
}

/// Asserts that neither stderr (errors and the JSON audit log) nor stdout
/// holds the leaked value, and that the one error line names `field`.
fn assert_not_echoed(out: &Output, field: &str) {
    let stderr = String::from_utf8_lossy(&out.stderr);
    for leak in [LEAK, "LEAKEDKEY", "leakedkey"] {
        assert!(!stderr.contains(leak), "{stderr}");
        assert!(!stdout(out).contains(leak), "{}", stdout(out));
    }
    assert!(
        error_line(&stderr).contains(&format!("the {field} field ")),
        "{stderr}"
    );
}

/// The JSON log lines of `stderr`, parsed (each must be valid JSON).
fn json_lines(stderr: &str) -> Vec<serde_json::Value> {
    stderr
        .lines()
        .filter(|l| l.starts_with('{'))
        .map(|l| serde_json::from_str(l).expect("JSON log line"))
        .collect()
}

/// Audit records among the JSON log lines of `stderr`.
fn audit_records(stderr: &str) -> Vec<serde_json::Value> {
    json_lines(stderr)
        .into_iter()
        .filter(|v| v["target"] == "sesame::audit")
        .collect()
}

#[test]
fn seal_ses_never_echoes_region_host_or_port_from_the_input() {
    let dir = tempfile::tempdir().expect("temp dir");
    let out_file = dir.path().join("ses.sealed");
    // Also a well-formed region that is not known (`seal` refuses it without
    // --ses-any-region; `ses check` accepts it).
    let unknown_region = (
        "username=u\npassword=p\nregion=xx-leakedkey-1\n".to_owned(),
        "region",
    );
    for (input, field) in leaky_documents().into_iter().chain([unknown_region]) {
        let out = run_with_stdin(
            sesame()
                .args(["seal", "--ses", "--log-format", "json"])
                .args(["--pkcs11", NOWHERE_URI, "--out"])
                .arg(&out_file),
            input.as_bytes(),
        );
        // Bad data from standard input, not a usage error.
        let stderr = expect_code(&out, 65);
        assert_not_echoed(&out, field);
        let audit = audit_records(&stderr);
        assert_eq!(audit.len(), 1, "{stderr}");
        assert_eq!(audit[0]["event"], "seal");
        assert_eq!(audit[0]["outcome"], "failed");
        assert!(
            audit[0]["reason"]
                .as_str()
                .unwrap_or("")
                .contains(&format!("the {field} field")),
            "{stderr}"
        );
        assert!(!out_file.exists());
    }
    // The same values as flags are the user's own arguments: quoted, exit 64.
    for (flags, quoted) in [
        (["--ses-region", "eu west 1"], "\"eu west 1\" is not"),
        (["--ses-endpoint", "bad host"], "\"bad host\" is not"),
    ] {
        let out = seal_ses_nowhere(
            &out_file,
            &flags,
            b"username=u\npassword=p\nregion=eu-west-1\n",
        );
        let stderr = expect_code(&out, 64);
        assert!(stderr.contains(quoted), "{stderr}");
    }
}

#[test]
fn check_stdin_never_echoes_region_host_or_port_from_the_input() {
    for (input, field) in leaky_documents() {
        let out = run_with_stdin(
            sesame().args(["ses", "check", "--stdin", "--log-format", "json"]),
            input.as_bytes(),
        );
        expect_code(&out, 65);
        assert_not_echoed(&out, field);
    }
    // --host is an argument: quoted, exit 64.
    let out = run_with_stdin(
        sesame().args(["ses", "check", "--stdin", "--host", "a:b"]),
        b"username=u\npassword=p\nregion=eu-west-1\n",
    );
    let stderr = expect_code(&out, 64);
    assert!(stderr.contains("\"a:b\" is not a host name"), "{stderr}");
}

/// A sealed file whose only stanza no backend of this build can open: built
/// with the library and a throwaway backend type.
fn sealed_with_foreign_stanza(path: &Path) {
    use sesame::backend::{BackendError, KeyBackend};
    use sesame::format::Stanza;
    use sesame::secret::{DataKey, SecretDocument};

    struct Foreign;
    impl KeyBackend for Foreign {
        fn kind(&self) -> &'static str {
            "from-the-future"
        }
        fn wrap(&mut self, _key: &DataKey) -> Result<Stanza, BackendError> {
            Ok(Stanza::new("from-the-future").with("opaque", "x"))
        }
        fn unwrap(&mut self, _stanza: &Stanza) -> Result<DataKey, BackendError> {
            unreachable!("never called by these tests")
        }
    }
    let doc = SecretDocument::parse_input(b"username=u\npassword=p\n").expect("document");
    let bytes = sesame::envelope::seal(
        &doc,
        &sesame::envelope::SealOptions::new(None),
        &mut [&mut Foreign],
    )
    .expect("seal");
    std::fs::write(path, bytes).expect("write sealed file");
}

/// A temp dir holding `foreign.sealed`, made by [`sealed_with_foreign_stanza`].
fn foreign_sealed() -> (tempfile::TempDir, PathBuf) {
    let dir = tempfile::tempdir().expect("temp dir");
    let foreign = dir.path().join("foreign.sealed");
    sealed_with_foreign_stanza(&foreign);
    (dir, foreign)
}

/// Runs `sesame ARGS FILE`, asserts exit `code`; returns the output and stderr.
fn run_on(args: &[&str], file: &Path, code: i32) -> (Output, String) {
    let out = run(sesame().args(args).arg(file));
    let stderr = expect_code(&out, code);
    (out, stderr)
}

fn status_json(files: &[&Path]) -> (Output, serde_json::Value) {
    let out = run(sesame().args(["status", "--json"]).args(files));
    let value = serde_json::from_slice(&out.stdout).expect("status --json prints JSON");
    (out, value)
}

#[test]
fn status_is_critical_when_nothing_can_unseal() {
    let (dir, foreign) = foreign_sealed();
    let garbage = dir.path().join("garbage.sealed");
    std::fs::write(&garbage, "not sealed\n").expect("write");
    let missing = dir.path().join("missing.sealed");

    let (out, json) = status_json(&[&foreign, &garbage, &missing]);
    expect_code(&out, 2);
    assert_eq!(json["status"], "CRITICAL");
    assert_eq!(json["code"], 2);
    assert_eq!(json["rotation_days"], 90);
    let files = json["files"].as_array().expect("files");
    assert_eq!(files.len(), 3);
    assert!(files.iter().all(|f| f["status"] == "CRITICAL"), "{json}");
    assert_eq!(files[0]["stanzas"][0]["type"], "from-the-future");
    assert_eq!(files[0]["stanzas"][0]["can_unseal"], false);
    assert_eq!(files[0]["age_source"], "header");
    assert!(files[1]["problems"][0]["message"]
        .as_str()
        .unwrap_or("")
        .contains("not a valid sealed file"));
    assert!(files[2]["problems"][0]["message"]
        .as_str()
        .unwrap_or("")
        .contains("cannot read"));

    // Text: the first line is the Nagios summary.
    let (out, _) = run_on(&["status"], &foreign, 2);
    let text = stdout(&out);
    assert!(text.starts_with("SESAME CRITICAL - "), "{text}");
    assert!(
        text.contains("stanza 1 from-the-future: can unseal: no"),
        "{text}"
    );
}

#[test]
fn unseal_failures_are_audited_once() {
    let dir = tempfile::tempdir().expect("temp dir");
    let missing = dir.path().join("missing.sealed");
    // JSON: exactly one audit event, plus the one-line error.
    let (_, stderr) = run_on(&["unseal", "--log-format", "json"], &missing, 66);
    let events = json_lines(&stderr);
    assert_eq!(events.len(), 1, "{stderr}");
    assert_eq!(events[0]["target"], "sesame::audit");
    assert_eq!(events[0]["event"], "unseal");
    assert_eq!(events[0]["outcome"], "failed");
    assert_eq!(events[0]["file"], missing.display().to_string());
    // Text at default verbosity: the error line alone.
    let (_, stderr) = run_on(&["unseal"], &missing, 66);
    assert_eq!(stderr.lines().count(), 1, "{stderr}");
    // Text with -v: the audit event too, journald-friendly (no timestamp, no colour).
    let (_, stderr) = run_on(&["unseal", "-v"], &missing, 66);
    let audit: Vec<&str> = stderr
        .lines()
        .filter(|l| l.contains("sesame::audit"))
        .collect();
    assert_eq!(audit.len(), 1, "{stderr}");
    assert!(audit[0].contains("outcome=\"failed\""), "{stderr}");
    assert!(!stderr.contains('\u{1b}'));
}

#[test]
fn status_with_no_default_files_or_bad_options_is_unknown() {
    // A bad PIN source is a problem with the check itself, not the files.
    let (_dir, foreign) = foreign_sealed();
    let (out, _) = run_on(
        &["status", "--pkcs11-pin-source", "nonsense:x"],
        &foreign,
        3,
    );
    assert_summary(&out, "SESAME UNKNOWN - ");
}

#[test]
fn audit_json_has_the_documented_fields() {
    let (_dir, foreign) = foreign_sealed();
    let (_, stderr) = run_on(&["unseal", "--log-format", "json"], &foreign, 69);
    let line = stderr
        .lines()
        .find(|l| l.starts_with('{'))
        .expect("an audit line");
    let v: serde_json::Value = serde_json::from_str(line).expect("JSON");
    for field in [
        "event",
        "purpose",
        "file",
        "backend",
        "pcrs",
        "endpoint",
        "generation",
        "outcome",
        "reason",
    ] {
        assert!(v.get(field).is_some(), "{field} missing: {line}");
    }
    assert_eq!(v["backend"], "from-the-future");
}

// ---- With a real backend: PKCS#11 on a private SoftHSM token per test. ----

use common::softhsm::SoftHsm;
use common::write_private;

#[test]
fn seal_ses_then_unseal_and_check_live() {
    let hsm = SoftHsm::with_aes_key("sesame", "kek");
    let sealed = hsm.dir().join("ses.sealed");
    let secret = random_secret();
    let out = run_with_stdin(
        hsm.command()
            .args([
                "seal",
                "--ses",
                "--ses-region",
                "eu-west-1",
                "--pkcs11",
                &hsm.uri("kek"),
                "--out",
            ])
            .arg(&sealed),
        format!("aws_access_key_id={USER}\naws_secret_access_key={secret}\n").as_bytes(),
    );
    let stderr = expect_code(&out, 0);
    assert!(!stderr.contains(&secret));
    let bytes = std::fs::read(&sealed).expect("sealed file");
    assert!(!String::from_utf8_lossy(&bytes).contains(&secret));

    // The complete SES document, with the derived password and not the secret key.
    let out = run(hsm.command().arg("unseal").arg(&sealed));
    expect_code(&out, 0);
    let doc: serde_json::Value = serde_json::from_slice(&out.stdout).expect("JSON document");
    let password = python_derive(&secret, "eu-west-1");
    assert_eq!(doc["username"], USER);
    assert_eq!(doc["password"], password.as_str());
    assert_eq!(doc["host"], "email-smtp.eu-west-1.amazonaws.com");
    assert_eq!(doc["port"], "587");
    assert_eq!(doc["region"], "eu-west-1");
    assert!(
        sesame::status::parse_time(doc["created"].as_str().unwrap_or("")).is_some(),
        "{doc}"
    );
    assert_eq!(doc.as_object().map(|o| o.len()), Some(6), "{doc}");

    // A live check of the sealed credentials against the stand-in.
    let standin = StandIn::start(USER, &password);
    let out = run(hsm
        .command()
        .args([
            "ses",
            "check",
            "--log-format",
            "json",
            "--host",
            "127.0.0.1",
            "--port",
        ])
        .arg(standin.port().to_string())
        .arg("--ca-file")
        .arg(standin.ca())
        .arg(&sealed));
    let stderr = expect_code(&out, 0);
    assert!(!stderr.contains(&password) && !stdout(&out).contains(&password));
    let events = json_lines(&stderr);
    let audit: Vec<(&str, &str, &str)> = events
        .iter()
        .filter(|e| e["target"] == "sesame::audit")
        .map(|e| {
            (
                e["event"].as_str().unwrap_or(""),
                e["purpose"].as_str().unwrap_or(""),
                e["outcome"].as_str().unwrap_or(""),
            )
        })
        .collect();
    assert_eq!(
        audit,
        vec![
            ("unseal", "ses-check", "ok"),
            ("ses-check", "ses-check", "ok")
        ],
        "{stderr}"
    );
    assert_eq!(standin.records("auth").len(), 1);
    assert!(standin.records("message").is_empty());

    // The same file against a server that wants another password: 77.
    let other = StandIn::start(USER, "another-password");
    let out = run(hsm
        .command()
        .args(["ses", "check", "--host", "127.0.0.1", "--port"])
        .arg(other.port().to_string())
        .arg("--ca-file")
        .arg(other.ca())
        .arg(&sealed));
    expect_code(&out, 77);
}

#[test]
fn check_never_echoes_region_host_or_port_from_the_sealed_document() {
    let hsm = SoftHsm::with_aes_key("sesame", "kek");
    for (i, (document, field)) in leaky_documents().into_iter().enumerate() {
        let sealed = hsm.dir().join(format!("leaky-{i}.sealed"));
        // Sealed without --ses, so nothing checked the fields at seal time.
        seal_document(&hsm, &[hsm.uri("kek")], &sealed, &document);
        let out = run(hsm
            .command()
            .args(["ses", "check", "--log-format", "json"])
            .arg(&sealed));
        // A sealed document with bad data: 65, as for a malformed file.
        let stderr = expect_code(&out, 65);
        assert_not_echoed(&out, field);
        // The unseal itself succeeded and is audited; nothing else leaked.
        let audit = audit_records(&stderr);
        assert_eq!(audit[0]["event"], "unseal", "{stderr}");
        assert_eq!(audit[0]["outcome"], "ok", "{stderr}");
    }
}

fn seal_document(hsm: &SoftHsm, uris: &[String], path: &Path, document: &str) {
    let mut cmd = hsm.command();
    cmd.arg("seal").arg("--out").arg(path);
    for uri in uris {
        cmd.args(["--pkcs11", uri]);
    }
    expect_code(&run_with_stdin(&mut cmd, document.as_bytes()), 0);
}

#[test]
fn status_ok_and_credential_age() {
    let hsm = SoftHsm::with_aes_key("sesame", "kek");
    let fresh = hsm.dir().join("fresh.sealed");
    let old = hsm.dir().join("old.sealed");
    seal_document(&hsm, &[hsm.uri("kek")], &fresh, "username=u\npassword=p\n");
    seal_document(
        &hsm,
        &[hsm.uri("kek")],
        &old,
        "username=u\npassword=p\ncreated=2020-01-01\n",
    );

    let out = run(hsm.command().arg("status").arg(&fresh));
    expect_code(&out, 0);
    let text = stdout(&out);
    assert!(text.starts_with("SESAME OK - 1 sealed file OK\n"), "{text}");
    assert!(
        text.contains("stanza 1 pkcs11: can unseal: yes; PCR drift: n/a"),
        "{text}"
    );
    assert!(!text.contains(hsm.pin()));

    let out = run(hsm
        .command()
        .args(["status", "--json"])
        .arg(&fresh)
        .arg(&old));
    expect_code(&out, 1);
    let json: serde_json::Value = serde_json::from_slice(&out.stdout).expect("JSON");
    assert_eq!(json["status"], "WARNING");
    assert_eq!(json["files"][0]["status"], "OK");
    assert_eq!(json["files"][0]["age_days"], 0);
    assert_eq!(json["files"][1]["status"], "WARNING");
    assert_eq!(json["files"][1]["age_source"], "document");
    assert!(
        json["files"][1]["age_days"].as_u64().unwrap_or(0) > 365 * 5,
        "{json}"
    );
    assert!(json["files"][1]["problems"][0]["message"]
        .as_str()
        .unwrap_or("")
        .contains("past the 90-day rotation period"));

    // The period comes from the flag, else the settings file; 0 disables it.
    expect_code(
        &run(hsm
            .command()
            .args(["status", "--rotation-days", "0"])
            .arg(&old)),
        0,
    );
    let config = hsm.dir().join("sesame.toml");
    std::fs::write(&config, "rotation_days = 100000\n").expect("write config");
    expect_code(
        &run(hsm
            .command()
            .env("SESAME_CONFIG", &config)
            .arg("status")
            .arg(&old)),
        0,
    );
}

#[test]
fn status_warns_when_one_backend_cannot_unseal_and_is_critical_when_none_can() {
    let hsm = SoftHsm::with_aes_key("sesame", "kek");
    hsm.create_key("kek2", "aes");
    // The second stanza reads its PIN from its own file, broken after sealing.
    let second_pin = hsm.dir().join("second.pin");
    write_private(&second_pin, &format!("{}\n", hsm.pin()));
    let second_uri = hsm.uri("kek2").replace(
        &hsm.pin_file().display().to_string(),
        &second_pin.display().to_string(),
    );
    let sealed = hsm.dir().join("two.sealed");
    seal_document(
        &hsm,
        &[hsm.uri("kek"), second_uri],
        &sealed,
        "username=u\npassword=p\n",
    );
    write_private(&second_pin, "000000\n");

    let out = run(hsm
        .command()
        .args(["status", "--json", "--log-format", "json"])
        .arg(&sealed));
    let stderr = expect_code(&out, 1);
    let json: serde_json::Value = serde_json::from_slice(&out.stdout).expect("JSON");
    let stanzas = &json["files"][0]["stanzas"];
    assert_eq!(stanzas[0]["can_unseal"], true);
    assert_eq!(stanzas[1]["can_unseal"], false);
    assert!(json["files"][0]["problems"][0]["message"]
        .as_str()
        .unwrap_or("")
        .starts_with("stanza 2 (pkcs11) cannot unseal"));
    // One audit event per probe: one ok, one failed.
    let outcomes: Vec<String> = stderr
        .lines()
        .filter(|l| l.starts_with('{'))
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .filter(|e| e["event"] == "probe")
        .map(|e| e["outcome"].as_str().unwrap_or("").to_owned())
        .collect();
    assert_eq!(outcomes, vec!["ok", "failed"], "{stderr}");
    assert!(!stderr.contains(hsm.pin()));

    // With a wrong PIN for every stanza, nothing can unseal: CRITICAL.
    let wrong = hsm.dir().join("wrong.pin");
    write_private(&wrong, "000000\n");
    let out = run(hsm
        .command()
        .args(["status", "--pkcs11-pin-source"])
        .arg(format!("file:{}", wrong.display()))
        .arg(&sealed));
    expect_code(&out, 2);
    assert_summary(&out, "SESAME CRITICAL - ");
}
