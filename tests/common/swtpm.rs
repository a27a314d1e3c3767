//! A private swtpm per test: own state directory (so own seeds), own
//! loopback port pair P/P+1, started as a child process and stopped by PID
//! (SIGTERM, then waited for) on drop. Tests using it can run in parallel.

use std::fs;
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;

/// A running swtpm.
pub struct Swtpm {
    dir: tempfile::TempDir,
    port: u16,
    child: Option<Child>,
    log: bool,
}

impl Swtpm {
    /// Starts a fresh TPM (new seeds, PCRs zero).
    pub fn start() -> Self {
        Self::start_inner(false)
    }

    /// Starts a fresh TPM that logs every command (`--log level=20`), for
    /// [`Swtpm::commands_since`].
    pub fn start_logged() -> Self {
        Self::start_inner(true)
    }

    fn start_inner(log: bool) -> Self {
        let dir = tempfile::Builder::new()
            .prefix("sesame-swtpm-")
            .tempdir()
            .expect("swtpm state dir");
        let mut tpm = Self {
            dir,
            port: 0,
            child: None,
            log,
        };
        tpm.launch();
        tpm
    }

    /// `swtpm:host=127.0.0.1,port=P`, for `--tpm2-device`.
    pub fn tcti(&self) -> String {
        format!("swtpm:host=127.0.0.1,port={}", self.port)
    }

    /// The state directory.
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// `sesame` with `SESAME_TPM2_DEVICE` pointing here.
    pub fn sesame(&self) -> Command {
        let mut cmd = super::sesame();
        cmd.env("SESAME_TPM2_DEVICE", self.tcti());
        cmd
    }

    /// Runs a tpm2-tools command against this TPM; panics on failure.
    pub fn tool(&self, program: &str, args: &[&str]) -> Output {
        let out = Command::new(program)
            .args(args)
            .env("TPM2TOOLS_TCTI", self.tcti())
            .env("TSS2_LOG", "all+NONE")
            .stdin(Stdio::null())
            .output()
            .unwrap_or_else(|e| panic!("run {program}: {e}"));
        assert!(
            out.status.success(),
            "{program} {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        out
    }

    /// Extends SHA-256 PCR `pcr` (and so changes it).
    pub fn extend_pcr(&self, pcr: u8) {
        let arg = format!("{pcr}:sha256={}", "ab".repeat(32));
        self.tool("tpm2_pcrextend", &[&arg]);
    }

    /// Every transient object and session currently in the TPM: must be
    /// empty between commands, since swtpm has no resource manager.
    pub fn loaded_handles(&self) -> Vec<String> {
        let mut out = Vec::new();
        for what in [
            "handles-transient",
            "handles-loaded-session",
            "handles-saved-session",
        ] {
            let o = self.tool("tpm2_getcap", &[what]);
            out.extend(
                String::from_utf8_lossy(&o.stdout)
                    .lines()
                    .filter(|l| !l.trim().is_empty())
                    .map(|l| format!("{what}: {}", l.trim())),
            );
        }
        out
    }

    /// Asserts nothing is left loaded.
    pub fn assert_clean(&self, after: &str) {
        let left = self.loaded_handles();
        assert!(left.is_empty(), "left loaded after {after}: {left:?}");
    }

    /// Reboots: stop and start on the same state (seeds and persistent
    /// handles kept; PCRs reset; transients gone).
    pub fn restart(&mut self) {
        self.stop();
        self.launch();
    }

    /// Stops the TPM (the TCTI then refuses connections).
    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            // Invariant: a child PID fits in i32 on Linux.
            let pid = Pid::from_raw(i32::try_from(child.id()).expect("pid fits i32"));
            let _ = kill(pid, Signal::SIGTERM);
            let deadline = Instant::now() + Duration::from_secs(5);
            loop {
                match child.try_wait() {
                    Ok(Some(_)) | Err(_) => break,
                    Ok(None) if Instant::now() > deadline => {
                        let _ = child.kill();
                        let _ = child.wait();
                        break;
                    }
                    Ok(None) => std::thread::sleep(Duration::from_millis(10)),
                }
            }
        }
    }

    fn log_path(&self) -> PathBuf {
        self.dir().join("swtpm.log")
    }

    /// Length of the command log now, to pass to [`Swtpm::commands_since`].
    pub fn log_mark(&self) -> u64 {
        self.settle_log();
        fs::metadata(self.log_path()).map_or(0, |m| m.len())
    }

    /// swtpm may write its log a moment after answering: wait until the log
    /// stops growing (at most 2 s).
    fn settle_log(&self) {
        let size = || fs::metadata(self.log_path()).map_or(0, |m| m.len());
        let deadline = Instant::now() + Duration::from_secs(2);
        let mut last = size();
        while Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(100));
            let now = size();
            if now == last {
                return;
            }
            last = now;
        }
    }

    /// TPM command codes received since `mark`, in order (only for
    /// [`Swtpm::start_logged`]).
    pub fn commands_since(&self, mark: u64) -> Vec<u32> {
        assert!(
            self.log,
            "start the swtpm with start_logged() to count commands"
        );
        let log = fs::read(self.log_path()).unwrap_or_default();
        let text =
            String::from_utf8_lossy(&log[usize::try_from(mark).unwrap_or(0).min(log.len())..])
                .into_owned();
        parse_commands(&text)
    }

    /// Starts swtpm on a free port pair (after a restart, first on the old
    /// one so the TCTI stays valid), retrying on collisions with other tests.
    fn launch(&mut self) {
        let mut last_error = String::new();
        let previous = (self.port != 0).then_some(self.port);
        for attempt in 0..20 {
            let port = match (attempt, previous) {
                (0..=4, Some(p)) => p,
                _ => match free_port_pair() {
                    Some(p) => p,
                    None => continue,
                },
            };
            match self.spawn(port) {
                Ok(child) => {
                    self.port = port;
                    self.child = Some(child);
                    return;
                }
                Err(e) => {
                    last_error = e;
                    std::thread::sleep(Duration::from_millis(50));
                }
            }
        }
        panic!("could not start swtpm: {last_error}");
    }

    fn spawn(&self, port: u16) -> Result<Child, String> {
        let dir = self.dir().display().to_string();
        let mut args = vec![
            "socket".to_owned(),
            "--tpm2".into(),
            "--server".into(),
            format!("type=tcp,port={port},bindaddr=127.0.0.1"),
            "--ctrl".into(),
            format!("type=tcp,port={},bindaddr=127.0.0.1", port + 1),
            "--flags".into(),
            "not-need-init,startup-clear".into(),
            "--tpmstate".into(),
            format!("dir={dir}"),
            "--pid".into(),
            format!("file={dir}/swtpm.pid"),
        ];
        if self.log {
            args.push("--log".into());
            args.push(format!("file={},level=20", self.log_path().display()));
        }
        let mut child = Command::new("swtpm")
            .args(&args)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .map_err(|e| format!("spawn swtpm: {e}"))?;
        let deadline = Instant::now() + Duration::from_secs(5);
        loop {
            if let Ok(Some(status)) = child.try_wait() {
                let mut err = String::new();
                if let Some(mut s) = child.stderr.take() {
                    let _ = std::io::Read::read_to_string(&mut s, &mut err);
                }
                return Err(format!("swtpm exited ({status}): {err}"));
            }
            let ready = Command::new("swtpm_ioctl")
                .args(["--tcp", &format!("127.0.0.1:{}", port + 1), "-c"])
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status()
                .is_ok_and(|s| s.success());
            if ready {
                return Ok(child);
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                let _ = child.wait();
                return Err("swtpm did not become ready in 5 s".into());
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }
}

impl Drop for Swtpm {
    fn drop(&mut self) {
        self.stop();
    }
}

/// A port P with P and P+1 both free on loopback right now.
fn free_port_pair() -> Option<u16> {
    let first = TcpListener::bind("127.0.0.1:0").ok()?;
    let port = first.local_addr().ok()?.port();
    let second = TcpListener::bind(("127.0.0.1", port.checked_add(1)?)).ok()?;
    drop((first, second));
    Some(port)
}

/// Command codes from swtpm's level-20 log: each command is a
/// `SWTPM_IO_Read: length N` line followed by hex bytes; the code is bytes
/// 6..10 of the command header.
pub fn parse_commands(log: &str) -> Vec<u32> {
    let mut out = Vec::new();
    let mut lines = log.lines();
    while let Some(line) = lines.next() {
        if !line.contains("SWTPM_IO_Read:") {
            continue;
        }
        let bytes: Vec<u8> = lines
            .next()
            .unwrap_or("")
            .split_whitespace()
            .filter_map(|b| u8::from_str_radix(b, 16).ok())
            .collect();
        if bytes.len() >= 10 {
            out.push(u32::from_be_bytes([bytes[6], bytes[7], bytes[8], bytes[9]]));
        }
    }
    out
}

/// A TPM command code's name, for readable assertion messages.
pub fn command_name(code: u32) -> &'static str {
    match code {
        0x131 => "CreatePrimary",
        0x153 => "Create",
        0x157 => "Load",
        0x15E => "Unseal",
        0x165 => "FlushContext",
        0x16C => "PolicyCommandCode",
        0x173 => "ReadPublic",
        0x176 => "StartAuthSession",
        0x17A => "GetCapability",
        0x17E => "PCR_Read",
        0x17F => "PolicyPCR",
        0x120 => "EvictControl",
        _ => "other",
    }
}
