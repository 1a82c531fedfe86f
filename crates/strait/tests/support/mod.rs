//! Running the real `strait` binary in tests: arguments, stdin, and what it printed.

use std::io::Write;
use std::process::{Command, Output, Stdio};

/// Runs `strait ARGS` with `stdin` (no `STRAIT_CONFIG` from the environment).
pub fn run(args: &[&std::ffi::OsStr], stdin: &[u8]) -> Output {
    let mut child = Command::new(env!("CARGO_BIN_EXE_strait"))
        .args(args)
        .env_remove("STRAIT_CONFIG")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    child.stdin.take().unwrap().write_all(stdin).unwrap();
    child.wait_with_output().unwrap()
}

/// Standard output followed by standard error, for assertions and failure messages.
pub fn text(o: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}
