//! A private SoftHSM2 token per test, so PKCS#11 tests run in parallel.
//!
//! ```text
//! let hsm = SoftHsm::new("sesame");          // temp dir, conf, token, 0600 PIN file
//! hsm.create_key("kek", "aes");              // via `sesame pkcs11 create-key`
//! let out = run_with_stdin(
//!     hsm.command().args(["seal", "--out", path, "--pkcs11", &hsm.uri("kek")]),
//!     b"username=u\npassword=p\n",
//! );
//! ```
//! Everything lives in a temporary directory removed on drop. The token's
//! files belong to the user running the tests.

use std::path::{Path, PathBuf};
use std::process::Command;

/// An isolated SoftHSM2 instance holding one initialized token.
pub struct SoftHsm {
    dir: tempfile::TempDir,
    conf: PathBuf,
    pin_file: PathBuf,
    pin: String,
    token: String,
}

impl SoftHsm {
    /// Makes a temp dir with a SoftHSM conf and an initialized token
    /// labelled `token`, whose user PIN (random) is in a 0600 file.
    ///
    /// Panics (failing the test) if softhsm2-util is missing or fails.
    pub fn new(token: &str) -> Self {
        let dir = tempfile::Builder::new()
            .prefix("sesame-softhsm-")
            .tempdir()
            .expect("create temp dir");
        let tokens = dir.path().join("tokens");
        std::fs::create_dir(&tokens).expect("create token dir");
        let conf = dir.path().join("softhsm2.conf");
        std::fs::write(
            &conf,
            format!(
                "directories.tokendir = {}\nobjectstore.backend = file\nlog.level = ERROR\nslots.removable = false\n",
                tokens.display()
            ),
        )
        .expect("write softhsm2.conf");
        let pin = random_hex(8);
        let so_pin = random_hex(8);
        let out = Command::new("softhsm2-util")
            .env("SOFTHSM2_CONF", &conf)
            .args(["--init-token", "--free", "--label", token])
            .args(["--so-pin", &so_pin, "--pin", &pin])
            .output()
            .expect("run softhsm2-util (is softhsm2 installed?)");
        assert!(
            out.status.success(),
            "softhsm2-util --init-token failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let pin_file = dir.path().join("user.pin");
        super::write_private(&pin_file, &format!("{pin}\n"));
        Self {
            dir,
            conf,
            pin_file,
            pin,
            token: token.to_owned(),
        }
    }

    /// A new token labelled `token` (see [`SoftHsm::new`]) holding the AES
    /// key `key`.
    pub fn with_aes_key(token: &str, key: &str) -> Self {
        let hsm = Self::new(token);
        hsm.create_key(key, "aes");
        hsm
    }

    /// The SoftHSM module: Debian's two paths, then other distributions'.
    pub fn module_path() -> PathBuf {
        [
            "/usr/lib/softhsm/libsofthsm2.so",
            "/usr/lib/x86_64-linux-gnu/softhsm/libsofthsm2.so",
            "/usr/lib/aarch64-linux-gnu/softhsm/libsofthsm2.so",
            "/usr/lib64/pkcs11/libsofthsm2.so",
        ]
        .iter()
        .map(PathBuf::from)
        .find(|p| p.exists())
        .expect("libsofthsm2.so not found (install softhsm2)")
    }

    /// A full URI for key `key` on this token: module-path and pin-source included.
    pub fn uri(&self, key: &str) -> String {
        format!(
            "pkcs11:token={};object={key}?module-path={}&pin-source=file:{}",
            self.token,
            Self::module_path().display(),
            self.pin_file.display()
        )
    }

    /// The same URI without pin-source (the PIN must come from elsewhere).
    pub fn uri_without_pin(&self, key: &str) -> String {
        format!(
            "pkcs11:token={};object={key}?module-path={}",
            self.token,
            Self::module_path().display()
        )
    }

    /// Creates key `key` of type `"aes"` or `"rsa"` (2048-bit, for speed)
    /// with the real CLI, asserting success.
    pub fn create_key(&self, key: &str, key_type: &str) {
        let out = super::run(self.command().args([
            "pkcs11",
            "create-key",
            &self.uri(key),
            "--type",
            key_type,
            "--bits",
            "2048",
        ]));
        super::expect_code(&out, 0);
    }

    /// `sesame` (see [`super::sesame`]) with `SOFTHSM2_CONF` set to this instance.
    pub fn command(&self) -> Command {
        let mut cmd = super::sesame();
        cmd.env("SOFTHSM2_CONF", &self.conf);
        cmd
    }

    /// The 0600 file holding the user PIN.
    pub fn pin_file(&self) -> &Path {
        &self.pin_file
    }

    /// `file:` and the PIN file: a value for `--pkcs11-pin-source`.
    pub fn pin_source(&self) -> String {
        format!("file:{}", self.pin_file.display())
    }

    /// The user PIN (for tests that check it never leaks).
    pub fn pin(&self) -> &str {
        &self.pin
    }

    /// The token label.
    pub fn token(&self) -> &str {
        &self.token
    }

    /// The SoftHSM conf file (`SOFTHSM2_CONF`).
    pub fn conf(&self) -> &Path {
        &self.conf
    }

    /// The private temp dir (removed on drop); put test files here.
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }
}

fn random_hex(bytes: usize) -> String {
    let mut buf = vec![0u8; bytes];
    getrandom::getrandom(&mut buf).expect("random bytes");
    buf.iter().map(|b| format!("{b:02x}")).collect()
}
