//! Running host commands with visible progress: every command is echoed, every
//! long step says what it does, and how long it took.

use anyhow::{bail, Context, Result};
use std::ffi::OsStr;
use std::process::{Command, ExitStatus, Stdio};
use std::time::Instant;

/// Prints `==> what`, runs `body`, then prints how long it took.
pub fn step<T>(what: &str, body: impl FnOnce() -> Result<T>) -> Result<T> {
    eprintln!("==> {what}");
    let started = Instant::now();
    let out = body().with_context(|| format!("step failed: {what}"))?;
    eprintln!(
        "    {what}: done in {:.1} s",
        started.elapsed().as_secs_f64()
    );
    Ok(out)
}

/// Builds a [`Command`] from a program and its arguments.
pub fn cmd<I, S>(program: &str, args: I) -> Command
where
    I: IntoIterator<Item = S>,
    S: AsRef<OsStr>,
{
    let mut command = Command::new(program);
    command.args(args);
    command
}

fn describe(command: &Command) -> String {
    let mut text = command.get_program().to_string_lossy().into_owned();
    for arg in command.get_args() {
        text.push(' ');
        text.push_str(&arg.to_string_lossy());
    }
    text
}

fn check(command: &Command, status: ExitStatus) -> Result<()> {
    if status.success() {
        Ok(())
    } else {
        bail!("`{}` failed: {status}", describe(command))
    }
}

/// Runs a command with inherited stdio and fails unless it exits 0.
pub fn run(command: &mut Command) -> Result<()> {
    eprintln!("    $ {}", describe(command));
    let status = command
        .stdin(Stdio::null())
        .status()
        .with_context(|| format!("cannot start `{}`", describe(command)))?;
    check(command, status)
}

/// Runs a command and returns its standard output; fails unless it exits 0.
pub fn output(command: &mut Command) -> Result<String> {
    let out = command
        .stdin(Stdio::null())
        .stderr(Stdio::inherit())
        .output()
        .with_context(|| format!("cannot start `{}`", describe(command)))?;
    check(command, out.status)?;
    String::from_utf8(out.stdout)
        .with_context(|| format!("`{}` printed non-UTF-8", describe(command)))
}

/// Size of a directory tree in MiB, for progress lines.
pub fn du_mib(path: &std::path::Path) -> u64 {
    output(&mut cmd("du", ["-sm".as_ref(), path.as_os_str()]))
        .ok()
        .and_then(|text| text.split_whitespace().next()?.parse().ok())
        .unwrap_or(0)
}
