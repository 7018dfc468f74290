//! `mirror info`: prints a volume's metadata record — identity, generation, whether it is a
//! usable image, and its last coherent sync — as text or JSON. Reads only; a record that is
//! absent or not trusted is said so, with exit 0 (it is a state, not an error of the command).

use std::path::{Path, PathBuf};

use clap::Args;
use mirror_core::meta::{default_meta_path, Loaded, MetaRecord, MetaStore};
use serde_json::json;

use crate::error::Result;

/// Options of `mirror info`.
#[derive(Debug, Args)]
pub struct InfoArgs {
    /// The volume (a regular file or a block device).
    pub path: PathBuf,

    /// The metadata record (default: PATH.mirror-meta beside the volume).
    #[arg(long, value_name = "PATH")]
    pub meta: Option<PathBuf>,

    /// One JSON object on stdout.
    #[arg(long)]
    pub json: bool,
}

/// The record path of `volume`, given `--meta`.
pub fn meta_path(volume: &Path, meta: Option<&Path>) -> PathBuf {
    meta.map_or_else(|| default_meta_path(volume), Path::to_path_buf)
}

fn time(ms: u64) -> String {
    if ms == 0 {
        return "never".into();
    }
    humantime::format_rfc3339_seconds(std::time::UNIX_EPOCH + std::time::Duration::from_millis(ms))
        .to_string()
}

fn record_json(r: &MetaRecord) -> serde_json::Value {
    json!({
        "identity": r.identity.to_string(),
        "role": r.role.name(),
        "generation": r.current.to_string(),
        "history": r.history.iter().map(|g| g.to_string()).collect::<Vec<_>>(),
        "bound_to": (!r.bound_to.is_none()).then(|| r.bound_to.to_string()),
        "consistent": r.consistent,
        "last_coherent": {
            "session": format!("{:032x}", r.last_coherent.session),
            "epoch": r.last_coherent.epoch,
            "time": (r.last_coherent_ms != 0).then(|| time(r.last_coherent_ms)),
            "peer": (!r.peer_addr.is_empty()).then(|| r.peer_addr.clone()),
            "peer_identity": (!r.peer_identity.is_none()).then(|| r.peer_identity.to_string()),
        },
        "checkpoint": r.checkpoint.map(|c| json!({
            "session": format!("{:032x}", c.session),
            "next_block": c.next_block,
        })),
    })
}

/// Runs `mirror info`.
pub fn run(a: InfoArgs) -> Result<()> {
    let path = meta_path(&a.path, a.meta.as_deref());
    let loaded = MetaStore::new(&path).load();
    let meta = path.display().to_string();
    if a.json {
        let v = match &loaded {
            Loaded::Valid(r) => {
                let mut v = record_json(r);
                v["meta"] = json!(meta);
                v["state"] = json!("valid");
                v
            }
            Loaded::Absent => json!({"meta": meta, "state": "absent"}),
            Loaded::Unknown(why) => json!({"meta": meta, "state": "unknown", "reason": why}),
        };
        println!("{v}");
        return Ok(());
    }
    match loaded {
        Loaded::Absent => println!("{meta}: no metadata record (mirror has not used this volume)"),
        Loaded::Unknown(why) => {
            println!("{meta}: record not trusted ({why}): unknown history, the next sync is a full checksum scan")
        }
        Loaded::Valid(r) => {
            println!("record      {meta}");
            println!("identity    {}", r.identity);
            println!("role        {}", r.role.name());
            println!("generation  {}", r.current);
            if !r.history.is_empty() {
                let h: Vec<_> = r.history.iter().map(|g| g.to_string()).collect();
                println!("history     {}", h.join(" "));
            }
            if !r.bound_to.is_none() {
                println!("mirrors     {}", r.bound_to);
            }
            println!(
                "consistent  {}",
                if r.consistent {
                    "yes"
                } else {
                    "no (a resync is under way or was cut off: not a usable image)"
                }
            );
            if r.last_coherent.session != 0 {
                println!(
                    "last sync   {} session {:032x} epoch {} with {} ({})",
                    time(r.last_coherent_ms),
                    r.last_coherent.session,
                    r.last_coherent.epoch,
                    if r.peer_addr.is_empty() {
                        "?"
                    } else {
                        &r.peer_addr
                    },
                    r.peer_identity
                );
            } else {
                println!("last sync   never");
            }
            if let Some(c) = r.checkpoint {
                println!(
                    "checkpoint  full scan of session {:032x} at block {}",
                    c.session, c.next_block
                );
            }
        }
    }
    Ok(())
}
