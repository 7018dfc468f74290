//! `mirror keygen`: an identity for TLS (a private key and its self-signed certificate), or a
//! random shared secret.
//!
//! Files are created, never overwritten: a key that exists stays the key. The private key and
//! the secret are written with mode 0600 from the start (never readable by others, not even
//! for a moment).

use std::io::Write;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

use clap::Args;
use mirror_core::tls::{Identity, Validity};

use crate::error::{stdout_err, CliError, Result, EXIT_OK};

/// `mirror keygen`.
#[derive(Debug, Args)]
pub struct KeygenArgs {
    /// Directory to write NAME.key (mode 0600) and NAME.crt into (created when missing).
    #[arg(
        value_name = "DIR",
        required_unless_present = "secret",
        conflicts_with = "secret"
    )]
    pub dir: Option<PathBuf>,

    /// Base name of the two files, and the certificate's common name.
    #[arg(
        long,
        value_name = "NAME",
        default_value = "mirror",
        conflicts_with = "secret"
    )]
    pub name: String,

    /// Write 32 random bytes to FILE (mode 0600) for --secret-file, instead of a certificate.
    #[arg(long, value_name = "FILE")]
    pub secret: Option<PathBuf>,
}

pub fn run(args: KeygenArgs) -> Result<u8> {
    match (&args.secret, &args.dir) {
        (Some(file), _) => secret(file),
        (None, Some(dir)) => identity(dir, &args.name),
        (None, None) => Err(CliError::Usage("give DIR, or --secret FILE".into())),
    }
}

fn check_name(name: &str) -> Result<()> {
    let ok = !name.is_empty()
        && name.len() <= 64
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
        && !name.starts_with('.');
    if ok {
        Ok(())
    } else {
        Err(CliError::Usage(format!(
            "--name {name:?}: use 1 to 64 letters, digits, '-', '_' or '.' (not first)"
        )))
    }
}

/// Creates `path` with `mode` and writes `bytes`; an existing file is an error.
fn create(path: &Path, mode: u32, bytes: &[u8]) -> Result<()> {
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(mode)
        .open(path)
        .map_err(|e| {
            if e.kind() == std::io::ErrorKind::AlreadyExists {
                CliError::Usage(format!(
                    "{} exists; refusing to overwrite it (remove it first if you mean to replace it)",
                    path.display()
                ))
            } else {
                CliError::io(format!("{}: create", path.display()), e)
            }
        })?;
    f.write_all(bytes)
        .and_then(|()| f.sync_all())
        .map_err(|e| CliError::io(format!("{}: write", path.display()), e))
}

fn identity(dir: &Path, name: &str) -> Result<u8> {
    check_name(name)?;
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
        .map_err(|e| CliError::io(format!("{}: create directory", dir.display()), e))?;
    let (key_path, cert_path) = (
        dir.join(format!("{name}.key")),
        dir.join(format!("{name}.crt")),
    );
    for p in [&key_path, &cert_path] {
        if p.exists() {
            return Err(CliError::Usage(format!(
                "{} exists; refusing to overwrite it (remove it first if you mean to replace it)",
                p.display()
            )));
        }
    }
    let id = Identity::self_signed(name, Validity::default_from_now())?;
    create(&key_path, 0o600, id.key_pem.as_bytes())?;
    create(&cert_path, 0o644, id.cert_pem.as_bytes())?;
    let mut out = std::io::stdout().lock();
    writeln!(
        out,
        "wrote {} (private key: keep it here)",
        key_path.display()
    )
    .and_then(|()| {
        writeln!(
            out,
            "wrote {} (certificate: give it to the peer for its --tls-trust)",
            cert_path.display()
        )
    })
    .and_then(|()| writeln!(out, "fingerprint {}", id.fingerprint))
    .map_err(stdout_err)?;
    Ok(EXIT_OK)
}

fn secret(file: &Path) -> Result<u8> {
    // A secret file loses one trailing newline when read: draw until the last byte is not one,
    // so the secret read back is the 32 bytes written.
    let mut bytes = [0u8; 32];
    loop {
        mirror_core::auth::random_bytes(&mut bytes)?;
        if !matches!(bytes[31], b'\n' | b'\r') {
            break;
        }
    }
    create(file, 0o600, &bytes)?;
    let mut out = std::io::stdout().lock();
    writeln!(out, "wrote {} (32 random bytes, mode 0600)", file.display()).map_err(stdout_err)?;
    Ok(EXIT_OK)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_file_name_safe() {
        assert!(check_name("backup-1.site_a").is_ok());
        for bad in ["", ".hidden", "a/b", "../x", "sp ace", &"x".repeat(65)] {
            assert!(check_name(bad).is_err(), "{bad:?}");
        }
    }
}
