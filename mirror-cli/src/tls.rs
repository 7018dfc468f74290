//! The TLS options every subcommand that links two peers takes, and the rule for plaintext:
//! loopback only, unless the operator says `--allow-insecure`.

use std::net::SocketAddr;
use std::path::PathBuf;

use clap::Args;
use mirror_core::tls::TlsConfig;

use crate::error::{CliError, Result};

/// `--tls-cert`, `--tls-key`, `--tls-trust`: all three or none.
#[derive(Debug, Clone, Args)]
pub struct TlsArgs {
    /// Our certificate, PEM (e.g. DIR/NAME.crt from `mirror keygen`). With --tls-key and
    /// --tls-trust the link is mutual TLS 1.3.
    #[arg(long, value_name = "FILE", requires_all = ["tls_key", "tls_trust"])]
    pub tls_cert: Option<PathBuf>,

    /// Our private key, PEM (DIR/NAME.key).
    #[arg(long, value_name = "FILE", requires_all = ["tls_cert", "tls_trust"])]
    pub tls_key: Option<PathBuf>,

    /// The certificates we trust, PEM: the peer's own certificate(s), or a CA that signed it.
    #[arg(long, value_name = "FILE", requires_all = ["tls_cert", "tls_key"])]
    pub tls_trust: Option<PathBuf>,
}

impl TlsArgs {
    /// The loaded configuration, when the options are given.
    pub fn load(&self) -> Result<Option<TlsConfig>> {
        match (&self.tls_cert, &self.tls_key, &self.tls_trust) {
            (Some(c), Some(k), Some(t)) => Ok(Some(TlsConfig::from_files(c, k, t)?)),
            (None, None, None) => Ok(None),
            _ => Err(CliError::Usage(
                "--tls-cert, --tls-key and --tls-trust go together".into(),
            )),
        }
    }
}

/// Refuses plaintext to or from a non-loopback address unless `allow_insecure`.
pub fn check_plaintext(
    addr: &SocketAddr,
    tls: bool,
    allow_insecure: bool,
    what: &str,
) -> Result<()> {
    if tls || allow_insecure || addr.ip().is_loopback() {
        return Ok(());
    }
    Err(CliError::Usage(format!(
        "refusing to {what} non-loopback address {addr} without TLS: give --tls-cert, --tls-key and --tls-trust (see 'mirror keygen'), or --allow-insecure if you mean it (a shared secret protects the handshake, not the data)"
    )))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plaintext_is_for_loopback_or_an_explicit_override() {
        let lo: SocketAddr = "127.0.0.1:7070".parse().unwrap();
        let far: SocketAddr = "192.0.2.1:7070".parse().unwrap();
        assert!(check_plaintext(&lo, false, false, "listen on").is_ok());
        assert!(check_plaintext(&far, true, false, "listen on").is_ok());
        assert!(check_plaintext(&far, false, true, "listen on").is_ok());
        let e = check_plaintext(&far, false, false, "connect to").unwrap_err();
        assert_eq!(e.exit_code(), crate::error::EXIT_USAGE);
        assert!(e.to_string().contains("--allow-insecure"), "{e}");
    }
}
