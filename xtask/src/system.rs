//! What xtask asks the system for: the output of a program, and the date.

use std::process::Command;

/// `date -u`, formatted; the clock is the only thing xtask asks the system for.
pub fn now_utc() -> String {
    output("date", &["-u", "+%Y-%m-%d %H:%M UTC"]).unwrap_or_else(|| "unknown".into())
}

/// The trimmed standard output of `program args`, when it ran and succeeded.
pub fn output(program: &str, args: &[&str]) -> Option<String> {
    let out = Command::new(program).args(args).output().ok()?;
    out.status
        .success()
        .then(|| String::from_utf8_lossy(&out.stdout).trim().to_string())
}
