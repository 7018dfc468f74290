//! `mirror serve`: a secondary daemon.
//!
//! Its first line on stdout is `listening on ADDR` (ADDR as `host:port`, the port the kernel
//! chose when 0 was asked), flushed at once, so a script can start it with port 0 and read
//! where to connect. It then serves until SIGINT or SIGTERM and exits 0.
//!
//! With `--scan-on-connect` or `--interval` it also leads checksum scans of its own, and
//! prints one line per finished scan (its report; a JSON line with `--json`).

use std::io::Write;
use std::net::{SocketAddr, ToSocketAddrs};

use mirror_core::{PeriodicScan, Secondary, SecondaryConfig};

use crate::cli::ServeArgs;
use crate::error::{stdout_err, CliError, Result, EXIT_OK};
use crate::report::{summary, JsonReport};
use crate::{signals, tls, volumes};

pub fn run(args: ServeArgs) -> Result<u8> {
    let listen = resolve(&args.listen)?;
    let mut config = SecondaryConfig::new(listen.to_string());
    config.allow_insecure = args.allow_insecure;
    config.link_timeout = args.link_timeout;
    config.meta = Some(crate::info::meta_path(
        &args.volume,
        args.volume_opts.meta.as_deref(),
    ));
    config.scan_on_connect = args.scan_on_connect;
    config.periodic = args.interval.map(|interval| PeriodicScan {
        interval,
        rate_mib_s: args.rate,
    });
    config.compare = args.compare;
    config.algorithm = args.algorithm;
    config.limits.handshake_timeout = args.handshake_timeout;
    config.limits.max_handshakes = args.max_handshakes as usize;
    // Refuse a non-loopback listener without TLS before touching anything.
    tls::check_plaintext(
        &listen,
        args.tls.tls_cert.is_some(),
        args.allow_insecure,
        "listen on",
    )?;
    if let Some(f) = &args.secret_file {
        config.secret = Some(mirror_core::config::read_secret_file(f)?);
    }
    config.tls = args.tls.load()?;
    if let Some(t) = &config.tls {
        tracing::info!(certificate = t.fingerprint(), trusted = ?t.trusted(), "TLS");
    }
    config.validate(&listen)?;

    if let Some(size) = args.create {
        if volumes::create_sparse(&args.volume, size)? {
            tracing::info!("created {} ({} bytes, sparse)", args.volume.display(), size);
        }
    }
    // The only writer of its volume: a second serve of it is refused.
    let volume = volumes::open_exclusive(&args.volume, &args.volume_opts)?;
    let stop = signals::stop_flag()?;
    let secondary = Secondary::new(volume, config)?;
    let addr = secondary.serve()?;
    {
        let mut out = std::io::stdout().lock();
        writeln!(out, "listening on {addr}").map_err(stdout_err)?;
        out.flush().map_err(stdout_err)?;
    }
    tracing::info!("serving {} on {addr}", args.volume.display());
    let mut scans = 0;
    while !signals::sleep_unless(&stop, std::time::Duration::from_millis(200)) {
        let st = secondary.status();
        if st.lead_scans != scans {
            scans = st.lead_scans;
            if let Some(r) = &st.last_report {
                let line = if args.json {
                    serde_json::to_string(&JsonReport::new("serve", r))
                        .map_err(|e| stdout_err(e.into()))?
                } else {
                    format!("secondary-led {}", summary(r))
                };
                let mut out = std::io::stdout().lock();
                writeln!(out, "{line}").map_err(stdout_err)?;
                out.flush().map_err(stdout_err)?;
            }
        }
    }
    tracing::info!("signal received: stopping");
    secondary.stop();
    let st = secondary.status();
    tracing::info!(
        "stopped after {} connections, {} writes applied",
        st.connections,
        st.writes_applied
    );
    Ok(EXIT_OK)
}

/// The first address `listen` names.
fn resolve(listen: &str) -> Result<SocketAddr> {
    listen
        .to_socket_addrs()
        .map_err(|e| CliError::Usage(format!("cannot listen on {listen:?}: {e}")))?
        .next()
        .ok_or_else(|| CliError::Usage(format!("{listen:?} names no address")))
}
