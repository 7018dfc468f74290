//! The command's one error type and the one place that maps errors to exit codes.
//!
//! Exit codes are part of the command's interface (documented in the README) and never
//! change meaning:
//!
//! | code | meaning |
//! |---|---|
//! | 0 | success; for `verify`, the volumes are coherent |
//! | 1 | `verify` found blocks that differ; `demo` found the pair not as it should be |
//! | 2 | usage: a bad option, value or argument (the engine's `InvalidArgument`) |
//! | 3 | I/O error on a local volume or file |
//! | 4 | link: the secondary could not be reached, the link was lost or timed out |
//! | 5 | the peer broke the protocol, the volumes do not match, or authentication failed |
//! | 6 | I/O error on the secondary's volume (a full disk, a failed write or flush), as the secondary reported it |
//! | 130 | interrupted by SIGINT or SIGTERM before the job finished |

use std::fmt;
use std::process::ExitCode;

use mirror_core::ErrorKind;

/// Exit code: success.
pub const EXIT_OK: u8 = 0;
/// Exit code: the volumes differ (`verify`), or the demo's pair is not as it should be.
pub const EXIT_INCOHERENT: u8 = 1;
/// Exit code: bad usage.
pub const EXIT_USAGE: u8 = 2;
/// Exit code: local I/O error.
pub const EXIT_IO: u8 = 3;
/// Exit code: link error.
pub const EXIT_LINK: u8 = 4;
/// Exit code: protocol, mismatch or authentication error.
pub const EXIT_PEER: u8 = 5;
/// Exit code: I/O error on the secondary's volume.
pub const EXIT_REMOTE_IO: u8 = 6;
/// Exit code: interrupted.
pub const EXIT_INTERRUPTED: u8 = 130;

/// Everything that can make a command fail.
#[derive(Debug)]
pub enum CliError {
    /// An engine error; its kind decides the exit code.
    Core(mirror_core::Error),
    /// A bad combination of options the parser cannot see.
    Usage(String),
    /// A local file or stream operation that is not a volume's.
    Io(String, std::io::Error),
    /// A check failed (the demo's, or a benchmark's).
    Check(String),
}

/// The command's result type.
pub type Result<T, E = CliError> = std::result::Result<T, E>;

impl CliError {
    /// The process exit code for this error.
    pub fn exit_code(&self) -> u8 {
        match self {
            CliError::Core(e) => match e.kind() {
                ErrorKind::InvalidArgument => EXIT_USAGE,
                ErrorKind::Io => EXIT_IO,
                ErrorKind::RemoteIo => EXIT_REMOTE_IO,
                ErrorKind::Link | ErrorKind::Closed => EXIT_LINK,
                ErrorKind::Protocol | ErrorKind::Mismatch | ErrorKind::Auth | ErrorKind::Busy => {
                    EXIT_PEER
                }
                ErrorKind::Cancelled => EXIT_INTERRUPTED,
                // A kind added after this command was written: a failure of the pair.
                _ => EXIT_PEER,
            },
            CliError::Usage(_) => EXIT_USAGE,
            CliError::Io(..) => EXIT_IO,
            CliError::Check(_) => EXIT_INCOHERENT,
        }
    }

    /// The exit code as the process returns it.
    pub fn exit(&self) -> ExitCode {
        ExitCode::from(self.exit_code())
    }

    /// True when the error is a closed stdout (`mirror scan | head`): not a failure.
    pub fn is_broken_pipe(&self) -> bool {
        matches!(self, CliError::Io(_, e) if e.kind() == std::io::ErrorKind::BrokenPipe)
    }

    /// An I/O error with what was being done.
    pub fn io(what: impl Into<String>, e: std::io::Error) -> Self {
        CliError::Io(what.into(), e)
    }
}

impl fmt::Display for CliError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            // The engine's own prefix ("invalid argument: ") adds nothing on a command line.
            CliError::Core(mirror_core::Error::InvalidArgument(m)) => f.write_str(m),
            CliError::Core(e) => write!(f, "{e}"),
            CliError::Usage(m) | CliError::Check(m) => f.write_str(m),
            CliError::Io(what, e) => write!(f, "{what}: {e}"),
        }
    }
}

impl From<mirror_core::Error> for CliError {
    fn from(e: mirror_core::Error) -> Self {
        CliError::Core(e)
    }
}

/// Writing to stdout.
pub fn stdout_err(e: std::io::Error) -> CliError {
    CliError::io("stdout", e)
}

/// Makes a one-line message of a clap error: its text up to the first blank line, lines
/// joined, without clap's `error: ` prefix, usage or tips.
pub fn one_line(rendered: &str) -> String {
    let mut parts = Vec::new();
    for line in rendered.lines() {
        let line = line.trim();
        if line.is_empty() || line.starts_with("Usage:") || line.starts_with("tip:") {
            break;
        }
        parts.push(line.strip_prefix("error: ").unwrap_or(line));
    }
    let mut msg = parts.join(" ");
    if msg.is_empty() {
        msg = "bad usage".into();
    }
    format!("{msg} (see 'mirror --help')")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn clap_errors_become_one_line() {
        let text = "error: the following required arguments were not provided:\n  --peer <ADDR>\n\nUsage: mirror sync --peer <ADDR> <PATH>\n\nFor more information, try '--help'.\n";
        assert_eq!(
            one_line(text),
            "the following required arguments were not provided: --peer <ADDR> (see 'mirror --help')"
        );
    }

    #[test]
    fn engine_kinds_map_to_documented_exit_codes() {
        let invalid: CliError = mirror_core::BlockSize::new(3).unwrap_err().into();
        assert_eq!(invalid.exit_code(), EXIT_USAGE);
        assert!(!invalid.to_string().starts_with("invalid argument"));
        let io = CliError::io("x", std::io::Error::other("boom"));
        assert_eq!(io.exit_code(), EXIT_IO);
    }
}
