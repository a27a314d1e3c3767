//! Black-box tests of the PKCS#11 backend: the real `sesame` binary against a
//! real SoftHSM2 token (one per test, so they run in parallel).

mod common;

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use common::softhsm::SoftHsm;
use common::write_private;
use common::{expect_code, run, run_with_stdin, tmpfs_dir};

/// A known secret: tests check it never shows up where it must not.
const PASSWORD: &str = "Sup3r-Secret-SES-pw/+=";
const SECRET: &str = "username=AKIAEXAMPLE\npassword=Sup3r-Secret-SES-pw/+=\nhost=email-smtp.eu-west-1.amazonaws.com\nport=587\nregion=eu-west-1\n";

fn sealed_path(hsm: &SoftHsm, name: &str) -> PathBuf {
    hsm.dir().join(format!("{name}.sealed"))
}

/// Seals [`SECRET`] to `uri` (plus `extra` flags); returns the output.
fn seal(hsm: &SoftHsm, out: &Path, uri: &str, extra: &[&str]) -> Output {
    let mut cmd = hsm.command();
    cmd.arg("seal")
        .arg("--out")
        .arg(out)
        .args(["--pkcs11", uri])
        .args(extra);
    run_with_stdin(&mut cmd, SECRET.as_bytes())
}

/// Seals and asserts success.
fn seal_ok(hsm: &SoftHsm, name: &str, uri: &str, extra: &[&str]) -> PathBuf {
    let path = sealed_path(hsm, name);
    expect_code(&seal(hsm, &path, uri, extra), 0);
    path
}

fn unseal(cmd: &mut Command, file: &Path, extra: &[&str]) -> Output {
    run(cmd.arg("unseal").arg(file).args(extra))
}

/// Asserts the failure was reported as exactly one `sesame: …` line, the
/// last on stderr, naming `what` (the file or command) and the backend, and
/// containing `needle`. Lines before it may only be log events.
fn assert_error_line(out: &Output, code: i32, what: &str, needle: &str) -> String {
    let stderr = expect_code(out, code);
    let lines: Vec<&str> = stderr.lines().collect();
    let errors: Vec<&&str> = lines.iter().filter(|l| l.starts_with("sesame: ")).collect();
    assert_eq!(errors.len(), 1, "one error line expected: {stderr}");
    let line = *errors[0];
    assert_eq!(
        Some(&line),
        lines.last(),
        "error line must come last: {stderr}"
    );
    for other in &lines[..lines.len() - 1] {
        let level = other.trim_start();
        assert!(
            ["TRACE", "DEBUG", "INFO", "WARN", "ERROR"]
                .iter()
                .any(|l| level.starts_with(l)),
            "unexpected stderr line {other:?}"
        );
    }
    assert!(line.contains(what), "{line:?} should name {what:?}");
    assert!(line.contains("pkcs11"), "{line:?} should name the backend");
    assert!(line.contains(needle), "{line:?} should say {needle:?}");
    line.to_owned()
}

/// [`assert_error_line`] for a failure that must name `file`.
fn assert_file_error(out: &Output, code: i32, file: &Path, needle: &str) -> String {
    assert_error_line(out, code, &file.display().to_string(), needle)
}

/// Unseals `file` with `extra` flags as `--format value --field password`
/// and asserts it exits 0 printing [`PASSWORD`].
fn assert_unseals_password(cmd: &mut Command, file: &Path, extra: &[&str]) {
    let mut args = extra.to_vec();
    args.extend(["--format", "value", "--field", "password"]);
    let out = unseal(cmd, file, &args);
    expect_code(&out, 0);
    assert_eq!(stdout(&out), PASSWORD);
}

/// Runs pkcs11-tool (an independent PKCS#11 client) on this token with
/// `args`, logged in with the user PIN if `login`.
fn pkcs11_tool(hsm: &SoftHsm, login: bool, args: &[&str]) -> Output {
    let mut cmd = Command::new("pkcs11-tool");
    cmd.env("SOFTHSM2_CONF", hsm.conf())
        .arg("--module")
        .arg(SoftHsm::module_path())
        .args(["--token-label", hsm.token()]);
    if login {
        cmd.args(["--login", "--pin", hsm.pin()]);
    }
    cmd.args(args)
        .output()
        .expect("run pkcs11-tool (is opensc installed?)")
}

/// Removes the `key-id:` line from a sealed file's header, as a file sealed
/// before key ids were recorded would lack it.
fn drop_key_id(file: &Path) {
    let text = std::fs::read(file).unwrap();
    let id_line = String::from_utf8_lossy(&text)
        .lines()
        .find(|l| l.starts_with("key-id: "))
        .expect("key-id recorded")
        .to_owned();
    std::fs::write(
        file,
        replace_bytes(&text, format!("{id_line}\n").as_bytes(), b""),
    )
    .unwrap();
}

fn stdout(out: &Output) -> String {
    String::from_utf8(out.stdout.clone()).expect("UTF-8 stdout")
}

#[test]
fn aes_seal_unseal_in_every_format() {
    let hsm = SoftHsm::with_aes_key("sesame", "kek");
    let file = seal_ok(&hsm, "aes", &hsm.uri("kek"), &[]);

    let header = std::fs::read(&file).unwrap();
    let header = String::from_utf8_lossy(&header);
    assert!(header.contains("\nmechanism: aes-gcm\n"), "{header}");
    assert!(header.contains("\naad: sesame-v1-data-key\n"), "{header}");
    assert!(
        header.contains(&format!("\nuri: {}\n", hsm.uri("kek"))),
        "{header}"
    );
    assert!(!header.contains(hsm.pin()));

    let json = unseal(&mut hsm.command(), &file, &[]);
    expect_code(&json, 0);
    let value: serde_json::Value = serde_json::from_slice(&json.stdout).unwrap();
    assert_eq!(value["password"], PASSWORD);
    assert_eq!(value["username"], "AKIAEXAMPLE");
    assert_eq!(value["region"], "eu-west-1");

    let env = unseal(&mut hsm.command(), &file, &["--format", "env"]);
    expect_code(&env, 0);
    assert!(
        stdout(&env).contains(&format!("PASSWORD=\"{PASSWORD}\"\n")),
        "{}",
        stdout(&env)
    );
    assert!(stdout(&env).contains("PORT=\"587\"\n"));

    let exim = unseal(&mut hsm.command(), &file, &["--format", "exim"]);
    expect_code(&exim, 0);
    assert_eq!(
        stdout(&exim),
        format!("email-smtp.eu-west-1.amazonaws.com:AKIAEXAMPLE:{PASSWORD}\n")
    );

    assert_unseals_password(&mut hsm.command(), &file, &[]);
}

#[test]
fn rsa_oaep_seals_with_sha1_and_explains_sha256() {
    let hsm = SoftHsm::new("sesame");
    hsm.create_key("rsa-kek", "rsa");

    // The default is SHA-256, which SoftHSM 2.6 refuses: a clear config error.
    let refused = sealed_path(&hsm, "sha256");
    let out = seal(&hsm, &refused, &hsm.uri("rsa-kek"), &[]);
    assert_error_line(&out, 78, "seal", "--pkcs11-oaep-hash sha1");
    assert!(!refused.exists());

    let file = seal_ok(
        &hsm,
        "rsa",
        &hsm.uri("rsa-kek"),
        &["--pkcs11-oaep-hash", "sha1"],
    );
    let header = String::from_utf8_lossy(&std::fs::read(&file).unwrap()).into_owned();
    assert!(
        header.contains("\nmechanism: rsa-oaep\nkey-id: "),
        "{header}"
    );
    assert!(header.contains("\nhash: sha1\n"), "{header}");

    assert_unseals_password(&mut hsm.command(), &file, &[]);
}

#[test]
fn rsa_sealing_needs_only_the_public_key_and_pin_source_override_works() {
    let hsm = SoftHsm::new("sesame");
    hsm.create_key("rsa-kek", "rsa");
    // No PIN anywhere: the public key is a public object.
    let file = seal_ok(
        &hsm,
        "nopin",
        &hsm.uri_without_pin("rsa-kek"),
        &["--pkcs11-oaep-hash", "sha1"],
    );
    // Unsealing needs the private key, so a PIN: none given is a config error.
    let out = unseal(&mut hsm.command(), &file, &[]);
    assert_file_error(&out, 78, &file, "no PIN");

    let pin_source = hsm.pin_source();
    assert_unseals_password(
        &mut hsm.command(),
        &file,
        &["--pkcs11-pin-source", &pin_source],
    );
}

#[test]
fn pin_source_override_replaces_the_recorded_one() {
    let hsm = SoftHsm::with_aes_key("sesame", "kek");
    // The recorded pin-source will not exist at unseal time.
    let old_pin = hsm.dir().join("old.pin");
    write_private(&old_pin, &format!("{}\n", hsm.pin()));
    let uri = format!(
        "{}&pin-source=file:{}",
        hsm.uri_without_pin("kek"),
        old_pin.display()
    );
    let file = seal_ok(&hsm, "override", &uri, &[]);
    std::fs::remove_file(&old_pin).unwrap();

    let out = unseal(&mut hsm.command(), &file, &[]);
    assert_file_error(&out, 78, &file, "old.pin");

    let pin_source = hsm.pin_source();
    let out = unseal(
        &mut hsm.command(),
        &file,
        &["--pkcs11-pin-source", &pin_source],
    );
    expect_code(&out, 0);
}

#[test]
fn create_key_refuses_an_existing_label() {
    let hsm = SoftHsm::with_aes_key("sesame", "kek");
    hsm.create_key("rsa-kek", "rsa");
    for (label, key_type) in [("kek", "aes"), ("kek", "rsa"), ("rsa-kek", "aes")] {
        let out =
            run(hsm
                .command()
                .args(["pkcs11", "create-key", &hsm.uri(label), "--type", key_type]));
        assert_error_line(&out, 73, "create-key", "already has an object labelled");
    }
}

#[test]
fn created_keys_are_sensitive_and_never_extractable() {
    let hsm = SoftHsm::with_aes_key("sesame", "kek");
    hsm.create_key("rsa-kek", "rsa");
    // Listed by an independent PKCS#11 client.
    let out = pkcs11_tool(&hsm, true, &["--list-objects"]);
    let listing = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(out.status.success(), "{listing}");
    // Blocks start with "Secret Key Object; …", "Private Key Object; …", …
    let mut objects: Vec<String> = Vec::new();
    for line in listing.lines() {
        if line.contains(" Key Object;") {
            objects.push(String::new());
        }
        if let Some(current) = objects.last_mut() {
            current.push_str(line);
            current.push('\n');
        }
    }
    assert_eq!(objects.len(), 3, "{listing}");
    let find = |class: &str| {
        objects
            .iter()
            .find(|o| o.starts_with(class))
            .unwrap_or_else(|| panic!("no {class} in {listing}"))
    };
    let aes = find("Secret Key Object; AES length 32");
    let private = find("Private Key Object; RSA");
    let public = find("Public Key Object; RSA 2048 bits");
    for key in [aes, private] {
        assert!(
            key.contains("Access:     sensitive, always sensitive, never extractable"),
            "{key}"
        );
    }
    assert!(aes.contains("Usage:      encrypt, decrypt\n"), "{aes}");
    assert!(private.contains("Usage:      decrypt\n"), "{private}");
    assert!(public.contains("Usage:      encrypt\n"), "{public}");
    // And they are private: invisible without logging in.
    let out = pkcs11_tool(&hsm, false, &["--list-objects"]);
    let public_listing = String::from_utf8_lossy(&out.stdout);
    assert!(
        !public_listing.contains("Secret Key Object"),
        "{public_listing}"
    );
    assert!(
        !public_listing.contains("Private Key Object"),
        "{public_listing}"
    );
}

/// Makes a key with pkcs11-tool (an independent client), with `flags` such
/// as `--extractable`.
fn pkcs11_tool_keygen(hsm: &SoftHsm, label: &str, key_type: &str, flags: &[&str]) {
    let generate = if key_type.starts_with("AES") {
        "--keygen"
    } else {
        "--keypairgen"
    };
    let mut args = vec![generate, "--key-type", key_type, "--label", label];
    args.push("--usage-decrypt");
    args.extend(flags);
    let out = pkcs11_tool(hsm, true, &args);
    assert!(
        out.status.success(),
        "pkcs11-tool: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn keys_that_can_leave_the_token_are_refused() {
    let hsm = SoftHsm::new("sesame");
    pkcs11_tool_keygen(&hsm, "aes-ext", "AES:32", &["--sensitive", "--extractable"]);
    pkcs11_tool_keygen(&hsm, "aes-plain", "AES:32", &[]);
    pkcs11_tool_keygen(
        &hsm,
        "rsa-ext",
        "rsa:2048",
        &["--sensitive", "--extractable"],
    );
    let out_path = sealed_path(&hsm, "refused");
    for (label, needle) in [
        (
            "aes-ext",
            "it is extractable (CKA_EXTRACTABLE is not false)",
        ),
        (
            "aes-plain",
            "it is not sensitive (CKA_SENSITIVE is not true)",
        ),
        (
            "rsa-ext",
            "its private key is extractable (CKA_EXTRACTABLE is not false)",
        ),
    ] {
        let out = seal(
            &hsm,
            &out_path,
            &hsm.uri(label),
            &["--pkcs11-oaep-hash", "sha1"],
        );
        let line = assert_error_line(&out, 78, "seal", needle);
        assert!(
            line.contains(&format!("refusing to seal to key {label:?}")),
            "{line}"
        );
        assert!(line.contains("create-key"), "{line}");
        assert!(!out_path.exists());
    }
    // Without a PIN only the public key is visible: sealing works and says
    // the private key could not be checked.
    let out = seal(
        &hsm,
        &out_path,
        &hsm.uri_without_pin("rsa-ext"),
        &["-v", "--pkcs11-oaep-hash", "sha1"],
    );
    let stderr = expect_code(&out, 0);
    assert!(stderr.contains("cannot be checked"), "{stderr}");
}

#[test]
fn pin_source_precedence_is_flag_then_uri_then_config() {
    let hsm = SoftHsm::new("sesame");
    let good = hsm.pin_source();
    // Missing files: the error names the one that was used.
    let flag_missing = format!("file:{}", hsm.dir().join("from-flag.pin").display());
    let config_missing = hsm.dir().join("from-config.toml");
    std::fs::write(
        &config_missing,
        format!(
            "pkcs11_pin_source = \"file:{}\"\n",
            hsm.dir().join("from-config.pin").display()
        ),
    )
    .unwrap();
    let config_good = hsm.dir().join("good.toml");
    std::fs::write(&config_good, format!("pkcs11_pin_source = \"{good}\"\n")).unwrap();
    let with_config = |config: &Path| {
        let mut cmd = hsm.command();
        cmd.arg("--config").arg(config);
        cmd
    };

    // create-key: the config is a default for a URI without pin-source; the
    // flag, also under its old name --pin-source, wins over the config.
    let create = |config: &Path, label: &str, extra: &[&str]| {
        run(with_config(config)
            .args(["pkcs11", "create-key", &hsm.uri_without_pin(label)])
            .args(["--type", "aes"])
            .args(extra))
    };
    expect_code(&create(&config_good, "kek", &[]), 0);
    let out = create(&config_missing, "kek2", &[]);
    assert_error_line(&out, 78, "create-key", "from-config.pin");
    expect_code(
        &create(&config_missing, "kek2", &["--pin-source", &good]),
        0,
    );
    let out = create(
        &config_good,
        "kek3",
        &["--pkcs11-pin-source", &flag_missing],
    );
    assert_error_line(&out, 78, "create-key", "from-flag.pin");

    // A file sealed with the PIN in its URI: the config does not replace it,
    // the flag does.
    let with_pin = seal_ok(&hsm, "with-pin", &hsm.uri("kek"), &[]);
    expect_code(
        &unseal(&mut with_config(&config_missing), &with_pin, &[]),
        0,
    );
    let out = unseal(
        &mut with_config(&config_good),
        &with_pin,
        &["--pkcs11-pin-source", &flag_missing],
    );
    assert_file_error(&out, 78, &with_pin, "from-flag.pin");

    // A URI without pin-source: sealing and unsealing use the config's, and
    // the flag still wins over it.
    let path = sealed_path(&hsm, "without-pin");
    let mut cmd = with_config(&config_good);
    cmd.args(["seal", "--out"])
        .arg(&path)
        .args(["--pkcs11", &hsm.uri_without_pin("kek")]);
    expect_code(&run_with_stdin(&mut cmd, SECRET.as_bytes()), 0);
    let refused = sealed_path(&hsm, "refused");
    let mut cmd = with_config(&config_good);
    cmd.args(["seal", "--out"])
        .arg(&refused)
        .args(["--pkcs11", &hsm.uri("kek")])
        .args(["--pkcs11-pin-source", &flag_missing]);
    let out = run_with_stdin(&mut cmd, SECRET.as_bytes());
    assert_error_line(&out, 78, "seal", "from-flag.pin");
    expect_code(&unseal(&mut with_config(&config_good), &path, &[]), 0);
    let out = unseal(&mut with_config(&config_missing), &path, &[]);
    assert_file_error(&out, 78, &path, "from-config.pin");
    let out = unseal(
        &mut with_config(&config_missing),
        &path,
        &["--pkcs11-pin-source", &good],
    );
    expect_code(&out, 0);
    let out = unseal(
        &mut with_config(&config_good),
        &path,
        &["--pkcs11-pin-source", &flag_missing],
    );
    assert_file_error(&out, 78, &path, "from-flag.pin");
}

#[test]
fn wrong_pin_is_refused() {
    let hsm = SoftHsm::with_aes_key("sesame", "kek");
    let file = seal_ok(&hsm, "pin", &hsm.uri("kek"), &[]);
    let wrong = hsm.dir().join("wrong.pin");
    write_private(&wrong, "000000\n");
    let source = format!("file:{}", wrong.display());
    let out = unseal(&mut hsm.command(), &file, &["--pkcs11-pin-source", &source]);
    assert_file_error(&out, 77, &file, "wrong PIN");
}

#[test]
fn group_readable_pin_file_is_refused() {
    let hsm = SoftHsm::with_aes_key("sesame", "kek");
    let file = seal_ok(&hsm, "open-pin", &hsm.uri("kek"), &[]);
    let open = hsm.dir().join("open.pin");
    std::fs::write(&open, format!("{}\n", hsm.pin())).unwrap();
    std::fs::set_permissions(&open, std::os::unix::fs::PermissionsExt::from_mode(0o640)).unwrap();
    let uri = format!(
        "{}&pin-source=file:{}",
        hsm.uri_without_pin("kek"),
        open.display()
    );

    let out = unseal(
        &mut hsm.command(),
        &file,
        &["--pkcs11-pin-source", &format!("file:{}", open.display())],
    );
    assert_file_error(&out, 78, &file, "readable by group or others");
    let out = seal(&hsm, &sealed_path(&hsm, "x"), &uri, &[]);
    assert_error_line(&out, 78, "seal", "readable by group or others");
}

#[test]
fn missing_module_and_non_pkcs11_library_are_unavailable() {
    let hsm = SoftHsm::with_aes_key("sesame", "kek");
    let module = SoftHsm::module_path().display().to_string();

    let missing = hsm.uri("kek").replace(&module, "/nonexistent/libpkcs11.so");
    let out = seal(&hsm, &sealed_path(&hsm, "missing"), &missing, &[]);
    assert_error_line(
        &out,
        69,
        "seal",
        "cannot load PKCS#11 module /nonexistent/libpkcs11.so",
    );

    // A real shared library that is not a PKCS#11 module, named in a sealed
    // file (the stanza is read before the header is authenticated).
    let libc = [
        "/lib/x86_64-linux-gnu/libc.so.6",
        "/lib/aarch64-linux-gnu/libc.so.6",
        "/lib64/libc.so.6",
        "/usr/lib64/libc.so.6",
    ]
    .into_iter()
    .find(|p| Path::new(p).exists())
    .expect("libc.so.6 not found");
    let file = seal_ok(&hsm, "libc", &hsm.uri("kek"), &[]);
    let text = std::fs::read(&file).unwrap();
    let edited = replace_bytes(&text, module.as_bytes(), libc.as_bytes());
    std::fs::write(&file, edited).unwrap();
    let out = unseal(&mut hsm.command(), &file, &[]);
    assert_file_error(&out, 69, &file, "is not a PKCS#11 module");
}

#[test]
fn module_without_its_configuration_is_unavailable() {
    let hsm = SoftHsm::new("sesame");
    let mut cmd = hsm.command();
    cmd.env("SOFTHSM2_CONF", hsm.dir().join("no-such.conf"))
        .arg("seal")
        .arg("--out")
        .arg(sealed_path(&hsm, "x"))
        .args(["--pkcs11", &hsm.uri("kek")]);
    let out = run_with_stdin(&mut cmd, SECRET.as_bytes());
    assert_error_line(&out, 69, "seal", "failed to initialize");
}

#[test]
fn token_missing_is_unavailable_and_lists_tokens() {
    let hsm = SoftHsm::new("sesame");
    let uri = hsm.uri("kek").replace("token=sesame", "token=elsewhere");
    let out = seal(&hsm, &sealed_path(&hsm, "x"), &uri, &[]);
    let line = assert_error_line(&out, 69, "seal", "no token matching token=\"elsewhere\"");
    assert!(line.contains("\"sesame\""), "{line}");
}

#[test]
fn key_missing_is_refused() {
    let hsm = SoftHsm::with_aes_key("sesame", "kek");
    let out = seal(&hsm, &sealed_path(&hsm, "x"), &hsm.uri("nosuch"), &[]);
    assert_error_line(&out, 77, "seal", "key missing");
    // And at unseal: the stanza names a key that is gone.
    let file = seal_ok(&hsm, "gone", &hsm.uri("kek"), &[]);
    let text = std::fs::read(&file).unwrap();
    std::fs::write(&file, replace_bytes(&text, b"object=kek", b"object=kex")).unwrap();
    let out = unseal(&mut hsm.command(), &file, &[]);
    assert_file_error(&out, 77, &file, "key missing");
}

#[test]
fn a_different_key_under_the_same_names_is_refused() {
    // Two tokens with the same token and key labels: the key on B is not the
    // one the file was sealed to.
    let a = SoftHsm::with_aes_key("sesame", "kek");
    let b = SoftHsm::with_aes_key("sesame", "kek");
    let file = seal_ok(&a, "a", &a.uri("kek"), &[]);
    let pin_b = b.pin_source();
    let out = unseal(&mut b.command(), &file, &["--pkcs11-pin-source", &pin_b]);
    assert_file_error(&out, 77, &file, "key different");

    // Without the recorded key id, B's key is tried and fails to decrypt.
    drop_key_id(&file);
    let out = unseal(&mut b.command(), &file, &["--pkcs11-pin-source", &pin_b]);
    assert_file_error(&out, 77, &file, "sealed with a different key");
}

#[test]
fn rsa_stanza_for_another_key_pair_is_refused() {
    let a = SoftHsm::new("sesame");
    let b = SoftHsm::new("sesame");
    a.create_key("rsa-kek", "rsa");
    b.create_key("rsa-kek", "rsa");
    let file = seal_ok(&a, "a", &a.uri("rsa-kek"), &["--pkcs11-oaep-hash", "sha1"]);
    drop_key_id(&file);
    let pin_b = b.pin_source();
    let out = unseal(&mut b.command(), &file, &["--pkcs11-pin-source", &pin_b]);
    assert_file_error(&out, 77, &file, "sealed with a different key");
}

#[test]
fn pin_value_in_a_uri_is_refused() {
    let hsm = SoftHsm::new("sesame");
    let uri = format!("{}&pin-value={}", hsm.uri_without_pin("kek"), hsm.pin());
    let out = seal(&hsm, &sealed_path(&hsm, "x"), &uri, &[]);
    let line = assert_error_line(&out, 78, "seal", "pin-value is refused");
    assert!(!line.contains(hsm.pin()));
}

#[test]
fn eight_parallel_unseals_all_succeed() {
    let hsm = SoftHsm::with_aes_key("sesame", "kek");
    let file = seal_ok(&hsm, "par", &hsm.uri("kek"), &[]);
    let children: Vec<_> = (0..8)
        .map(|_| {
            hsm.command()
                .arg("unseal")
                .arg(&file)
                .args(["--format", "value", "--field", "password"])
                .stdin(std::process::Stdio::null())
                .stdout(std::process::Stdio::piped())
                .stderr(std::process::Stdio::piped())
                .spawn()
                .expect("spawn sesame")
        })
        .collect();
    for child in children {
        let out = child.wait_with_output().unwrap();
        expect_code(&out, 0);
        assert_eq!(stdout(&out), PASSWORD);
    }
}

#[test]
fn secret_and_pin_never_reach_the_logs() {
    let hsm = SoftHsm::with_aes_key("sesame", "kek");
    hsm.create_key("rsa-kek", "rsa");
    let check = |out: &Output| {
        for stream in [&out.stdout, &out.stderr] {
            let text = String::from_utf8_lossy(stream);
            assert!(!text.contains(PASSWORD), "secret leaked: {text}");
            assert!(!text.contains(hsm.pin()), "PIN leaked: {text}");
        }
    };
    let file = hsm.dir().join("log.sealed");
    let out = run_with_stdin(
        hsm.command()
            .args(["-vvv", "seal", "--out"])
            .arg(&file)
            .args(["--pkcs11", &hsm.uri("kek")])
            .args([
                "--pkcs11",
                &hsm.uri("rsa-kek"),
                "--pkcs11-oaep-hash",
                "sha1",
            ]),
        SECRET.as_bytes(),
    );
    expect_code(&out, 0);
    check(&out);
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("data key wrapped"),
        "-vvv should log: {}",
        String::from_utf8_lossy(&out.stderr)
    );

    // Success, written to tmpfs so stdout carries nothing.
    let plain_dir = tmpfs_dir();
    let plain = plain_dir.path().join("ses.json");
    let out = run(hsm
        .command()
        .args(["-vvv", "unseal"])
        .arg(&file)
        .arg("--output")
        .arg(&plain));
    expect_code(&out, 0);
    check(&out);
    assert!(std::fs::read_to_string(&plain).unwrap().contains(PASSWORD));

    // Failures: a wrong PIN, then a damaged stanza.
    let wrong = hsm.dir().join("wrong.pin");
    write_private(&wrong, "999999\n");
    let out = run(hsm
        .command()
        .args(["-vvv", "unseal"])
        .arg(&file)
        .args(["--pkcs11-pin-source", &format!("file:{}", wrong.display())]));
    expect_code(&out, 77);
    check(&out);
    // Both stanzas damaged (else the second would unseal to stdout).
    edit_header(&file, |h| h.replace("\nwrapped: ", "\nwrapped: AAAA"));
    let out = run(hsm.command().args(["-vvv", "unseal"]).arg(&file));
    assert_ne!(out.status.code(), Some(0));
    check(&out);
}

/// Rewrites the (ASCII) header of a sealed file, keeping its binary body.
fn edit_header(file: &Path, edit: impl FnOnce(&str) -> String) {
    let bytes = std::fs::read(file).unwrap();
    let end = bytes
        .windows(5)
        .position(|w| w == b"\n---\n")
        .expect("header end")
        + 5;
    let header = std::str::from_utf8(&bytes[..end]).expect("ASCII header");
    let mut out = edit(header).into_bytes();
    out.extend_from_slice(&bytes[end..]);
    std::fs::write(file, out).unwrap();
}

/// Replaces the first occurrence of `from` (which must be present).
fn replace_bytes(haystack: &[u8], from: &[u8], to: &[u8]) -> Vec<u8> {
    let at = haystack
        .windows(from.len())
        .position(|w| w == from)
        .expect("pattern present");
    let mut out = haystack[..at].to_vec();
    out.extend_from_slice(to);
    out.extend_from_slice(&haystack[at + from.len()..]);
    out
}
