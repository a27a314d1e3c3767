//! Shared helpers for the black-box tests: every test runs the real `sesame`
//! binary as a child process against its own SoftHSM token or swtpm.
#![allow(dead_code)]

pub mod softhsm;
pub mod standin;
pub mod swtpm;

use std::io::Write as _;
use std::os::unix::fs::PermissionsExt as _;
use std::path::Path;
use std::process::{Command, Output, Stdio};

/// The binary under test, with a clean environment: no inherited config, no
/// TSS logging noise, no colour.
pub fn sesame() -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_sesame"));
    cmd.env_remove("SESAME_CONFIG")
        .env_remove("SESAME_TPM2_DEVICE")
        .env_remove("SOFTHSM2_CONF")
        .env("TSS2_LOG", "all+NONE")
        // A config path that does not exist would be an error; point at an empty one.
        .env("SESAME_CONFIG", empty_config());
    cmd
}

/// An empty settings file shared by all tests (no settings = all defaults).
pub fn empty_config() -> &'static Path {
    static PATH: std::sync::OnceLock<std::path::PathBuf> = std::sync::OnceLock::new();
    PATH.get_or_init(|| {
        let path =
            std::env::temp_dir().join(format!("sesame-test-empty-{}.toml", std::process::id()));
        std::fs::write(&path, "").expect("write empty config");
        path
    })
}

/// Runs `cmd` (sesame or any other program) with `stdin` as standard input;
/// returns its output.
pub fn run_with_stdin(cmd: &mut Command, stdin: &[u8]) -> Output {
    let program = cmd.get_program().to_string_lossy().into_owned();
    let mut child = cmd
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("spawn {program}: {e}"));
    // The command may exit before reading its input (a usage error): a broken
    // pipe here is part of the behaviour under test, not a harness failure.
    if let Err(e) = child.stdin.take().expect("stdin piped").write_all(stdin) {
        assert_eq!(e.kind(), std::io::ErrorKind::BrokenPipe, "write stdin: {e}");
    }
    child
        .wait_with_output()
        .unwrap_or_else(|e| panic!("wait for {program}: {e}"))
}

/// Writes `contents` to a new file with mode 0600.
pub fn write_private(path: &Path, contents: &str) {
    std::fs::write(path, contents).expect("write file");
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600)).expect("chmod 600");
}

/// Runs `cmd` with no standard input.
pub fn run(cmd: &mut Command) -> Output {
    cmd.stdin(Stdio::null()).output().expect("run sesame")
}

/// Asserts the exit code and returns stderr, with a useful failure message.
pub fn expect_code(out: &Output, code: i32) -> String {
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    assert_eq!(
        out.status.code(),
        Some(code),
        "expected exit {code}; stderr: {stderr}; stdout: {}",
        String::from_utf8_lossy(&out.stdout)
    );
    stderr
}

/// The permission bits (`mode & 0o777`) of the file at `path`, following links.
pub fn mode(path: &Path) -> u32 {
    std::fs::metadata(path)
        .expect("stat file")
        .permissions()
        .mode()
        & 0o777
}

/// A directory on tmpfs for plaintext outputs (/dev/shm, else /run).
pub fn tmpfs_dir() -> tempfile::TempDir {
    for base in ["/dev/shm", "/run"] {
        if let Ok(dir) = tempfile::tempdir_in(base) {
            return dir;
        }
    }
    panic!("no tmpfs (/dev/shm or /run) available for plaintext tests");
}
