//! A private SES stand-in per test: `tests/fixtures/smtp_standin.py` on a
//! free loopback port, with its own throwaway CA made by
//! `tests/fixtures/make-cert.sh`, so SMTP tests run in parallel.
//!
//! ```text
//! let standin = StandIn::start("AKIA...", "smtp-password");
//! // point the client at 127.0.0.1 / localhost, standin.port(), CA standin.ca()
//! assert_eq!(standin.records("auth")[0]["ok"], true);
//! ```
//! The stand-in offers STARTTLS, then AUTH PLAIN/LOGIN, and accepts mail only
//! from a session authenticated as `user` / `password`. Each AUTH attempt and
//! each message is recorded as one JSON file. Everything lives in a temporary
//! directory removed on drop; the process is killed (by PID) on drop, and
//! stops by itself after five minutes in any case.

use std::fs;
use std::os::unix::fs::PermissionsExt as _;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// `tests/fixtures`, where the stand-in and the certificate script live.
const FIXTURES: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures");

/// How long the stand-in lives at most if the test never drops it.
const MAX_SECONDS: &str = "300";

/// A running SMTP stand-in for SES.
pub struct StandIn {
    child: Child,
    dir: tempfile::TempDir,
    port: u16,
}

impl StandIn {
    /// Makes a CA and a server certificate for `localhost` / `127.0.0.1`,
    /// then starts a stand-in accepting `user` / `password` (the password
    /// goes through a 0600 file, never argv) and waits for its port.
    ///
    /// The directory and the certificate directory are 0755 so that a client
    /// running as another user (Exim as `Debian-exim`) can read the CA; the
    /// private keys and the password file stay 0600.
    ///
    /// Panics (failing the test) if bash, openssl or python3 is missing, or
    /// the stand-in does not report its port within 20 s.
    pub fn start(user: &str, password: &str) -> Self {
        let dir = tempfile::Builder::new()
            .prefix("sesame-standin-")
            .tempdir()
            .expect("stand-in temp dir");
        fs::set_permissions(dir.path(), fs::Permissions::from_mode(0o755))
            .expect("chmod stand-in dir");
        let certs = dir.path().join("certs");
        let status = Command::new("bash")
            .arg(Path::new(FIXTURES).join("make-cert.sh"))
            .arg(&certs)
            .status()
            .expect("run make-cert.sh (bash and openssl installed?)");
        assert!(status.success(), "make-cert.sh failed");
        fs::set_permissions(&certs, fs::Permissions::from_mode(0o755)).expect("chmod certs dir");
        let password_file = dir.path().join("password");
        super::write_private(&password_file, password);
        let port_file = dir.path().join("port");
        let mut child = Command::new("python3")
            .arg(Path::new(FIXTURES).join("smtp_standin.py"))
            .arg("--port-file")
            .arg(&port_file)
            .arg("--cert")
            .arg(certs.join("server.pem"))
            .arg("--key")
            .arg(certs.join("server.key"))
            .args(["--user", user, "--password-file"])
            .arg(&password_file)
            .arg("--record")
            .arg(dir.path().join("record"))
            .args(["--max-seconds", MAX_SECONDS])
            .stdin(Stdio::null())
            .spawn()
            .expect("start smtp_standin.py (python3 installed?)");
        // The stand-in writes the port file atomically once it listens.
        let deadline = Instant::now() + Duration::from_secs(20);
        let port = loop {
            if let Ok(text) = fs::read_to_string(&port_file) {
                break text.trim().parse().expect("port number in the port file");
            }
            if let Ok(Some(status)) = child.try_wait() {
                panic!("the SMTP stand-in exited before listening ({status})");
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                let _ = child.wait();
                panic!("the SMTP stand-in did not start in 20 s");
            }
            std::thread::sleep(Duration::from_millis(20));
        };
        Self { child, dir, port }
    }

    /// The loopback port it listens on.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// The throwaway CA certificate (PEM) that signed the server's.
    pub fn ca(&self) -> PathBuf {
        self.dir.path().join("certs/ca.pem")
    }

    /// The recorded events of `kind` (`"auth"` or `"message"`), parsed,
    /// oldest first; empty if nothing was recorded.
    ///
    /// An `auth` record has `mechanism`, `user` and `ok` (never the password);
    /// a `message` record has `user`, `mail_from`, `rcpt_to`, `data` and `tls`.
    pub fn records(&self, kind: &str) -> Vec<serde_json::Value> {
        let Ok(entries) = fs::read_dir(self.dir.path().join("record")) else {
            return Vec::new();
        };
        let prefix = format!("{kind}-");
        let mut names: Vec<PathBuf> = entries
            .map(|e| e.expect("read record dir").path())
            .filter(|p| {
                let name = p.file_name().unwrap_or_default().to_string_lossy();
                name.starts_with(&prefix) && name.ends_with(".json")
            })
            .collect();
        names.sort();
        names
            .iter()
            .map(|p| {
                serde_json::from_slice(&fs::read(p).expect("read record")).expect("JSON record")
            })
            .collect()
    }
}

impl Drop for StandIn {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
