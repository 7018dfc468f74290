//! What the `mirror` command does with the state that survives restarts, second primaries and
//! failovers — real processes, real files, real TCP on loopback.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::mpsc::{channel, Receiver};
use std::time::{Duration, Instant};

use serde_json::Value;

mod common;
use common::{mirror, pseudo_random, run, s, stderr};

const BLOCK: usize = 4096;

fn write_file(dir: &Path, name: &str, data: &[u8]) -> PathBuf {
    let p = dir.join(name);
    std::fs::write(&p, data).unwrap();
    p
}

fn info(p: &Path) -> Value {
    let o = run(&["info", s(p), "--json"]);
    assert!(o.status.success(), "{}", stderr(&o));
    serde_json::from_slice(&o.stdout).unwrap()
}

/// A `mirror serve` child, killed when dropped.
struct Served {
    child: Child,
    addr: String,
}

impl Served {
    fn start(volume: &Path, extra: &[&str]) -> Served {
        let mut child = mirror()
            .args(["serve", "--volume", s(volume), "--listen", "127.0.0.1:0"])
            .args(["--link-timeout", "2s"])
            .args(extra)
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let mut line = String::new();
        BufReader::new(child.stdout.take().unwrap())
            .read_line(&mut line)
            .unwrap();
        let addr = line
            .trim()
            .strip_prefix("listening on ")
            .unwrap_or_else(|| panic!("serve said {line:?}"))
            .to_owned();
        Served { child, addr }
    }
}

impl Drop for Served {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn signal(child: &Child, sig: &str) {
    Command::new("kill")
        .args([sig, &child.id().to_string()])
        .status()
        .unwrap();
}

fn wait_exit(child: &mut Child) -> Option<i32> {
    let deadline = Instant::now() + Duration::from_secs(60);
    while Instant::now() < deadline {
        if let Some(st) = child.try_wait().unwrap() {
            return st.code();
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    None
}

fn lines_of(child: &mut Child) -> Receiver<Value> {
    let (tx, rx) = channel();
    let out = child.stdout.take().unwrap();
    std::thread::spawn(move || {
        for line in BufReader::new(out).lines().map_while(|l| l.ok()) {
            if let Ok(v) = serde_json::from_str::<Value>(&line) {
                if tx.send(v).is_err() {
                    break;
                }
            }
        }
    });
    rx
}

/// The next scan report among a daemon's JSON lines (link events skipped).
fn next_report(rx: &Receiver<Value>) -> Value {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        let v = rx.recv_timeout(left).expect("a scan report");
        if !v["mode"].is_null() {
            return v;
        }
    }
}

fn sync(p: &Path, peer: &str, extra: &[&str]) -> Output {
    mirror()
        .args(["sync", s(p), "--peer", peer, "--link-timeout", "2s"])
        .args(extra)
        .output()
        .unwrap()
}

#[test]
fn a_second_volume_on_a_bound_secondary_exits_5_naming_both_until_adopted() {
    let dir = tempfile::tempdir().unwrap();
    let a = write_file(dir.path(), "a.img", &pseudo_random(64 * BLOCK, 1));
    let b = write_file(dir.path(), "b.img", &pseudo_random(64 * BLOCK, 2));
    let sv = dir.path().join("s.img");
    let served = Served::start(&sv, &["--create", "256K"]);
    let o = sync(&a, &served.addr, &[]);
    assert!(o.status.success(), "{}", stderr(&o));
    let o = sync(&b, &served.addr, &[]);
    assert_eq!(o.status.code(), Some(5), "{}", stderr(&o));
    let err = stderr(&o);
    let (ia, ib) = (info(&a)["identity"].clone(), info(&b)["identity"].clone());
    assert!(err.contains(ia.as_str().unwrap()), "{err}");
    assert!(err.contains(ib.as_str().unwrap()), "{err}");
    assert_eq!(std::fs::read(&sv).unwrap(), std::fs::read(&a).unwrap());
    let si = info(&sv);
    assert_eq!(si["bound_to"], ia);
    assert_eq!(si["consistent"], true);
    let o = sync(&b, &served.addr, &["--adopt"]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert_eq!(std::fs::read(&sv).unwrap(), std::fs::read(&b).unwrap());
    assert_eq!(info(&sv)["bound_to"], ib);
}

#[test]
fn two_live_primaries_and_a_verify_beside_a_daemon_leave_the_first_session_alone() {
    let dir = tempfile::tempdir().unwrap();
    let a = write_file(dir.path(), "a.img", &pseudo_random(256 * BLOCK, 3));
    let b = write_file(dir.path(), "b.img", &pseudo_random(256 * BLOCK, 4));
    let sv = dir.path().join("s.img");
    let served = Served::start(&sv, &["--create", "1M"]);
    let mut da = mirror()
        .args(["primary", "--volume", s(&a), "--peer", &served.addr])
        .args(["--interval", "1h", "--json", "--link-timeout", "2s"])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let rx = lines_of(&mut da);
    let first = next_report(&rx);
    assert_eq!(first["mode"], "full-scan", "{first}");
    // A second daemon, of another volume: refused while the first holds the secondary.
    let mut db = mirror()
        .args([
            "primary",
            "--volume",
            s(&b),
            "--peer",
            &served.addr,
            "--adopt",
        ])
        .args(["--interval", "1h", "--json", "--link-timeout", "2s"])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let rxb = lines_of(&mut db);
    // A one-shot verify of the first volume, beside its live daemon: refused the same way.
    let o = mirror()
        .args(["verify", s(&a), "--peer", &served.addr])
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(5), "{}", stderr(&o));
    assert!(stderr(&o).contains("held by session"), "{}", stderr(&o));
    std::thread::sleep(Duration::from_secs(3));
    assert!(
        rxb.try_iter()
            .all(|v| v["mode"].is_null() && v["state"] != "connected"),
        "the second daemon never got a session"
    );
    assert!(
        rx.try_iter()
            .all(|v| v["mode"].is_null() && v["state"] != "disconnected"),
        "the first daemon was never disturbed"
    );
    signal(&db, "-TERM");
    assert_eq!(wait_exit(&mut db), Some(0));
    signal(&da, "-TERM");
    assert_eq!(wait_exit(&mut da), Some(0));
    assert_eq!(std::fs::read(&sv).unwrap(), std::fs::read(&a).unwrap());
}

#[test]
fn failover_then_split_brain_exits_5_until_the_secondary_is_discarded() {
    let dir = tempfile::tempdir().unwrap();
    let a = write_file(dir.path(), "a.img", &pseudo_random(64 * BLOCK, 5));
    let b = write_file(dir.path(), "b.img", &[0u8; 64 * BLOCK]);
    {
        let served = Served::start(&b, &[]);
        let o = sync(&a, &served.addr, &[]);
        assert!(o.status.success(), "{}", stderr(&o));
    }
    // Failover: B is the primary now, A (the old primary) serves.
    std::fs::OpenOptions::new()
        .write(true)
        .open(&b)
        .and_then(|f| std::os::unix::fs::FileExt::write_all_at(&f, &[9u8; BLOCK], 0))
        .unwrap();
    {
        let served = Served::start(&a, &[]);
        let o = sync(&b, &served.addr, &[]);
        assert!(o.status.success(), "failover: {}", stderr(&o));
    }
    assert_eq!(std::fs::read(&a).unwrap(), std::fs::read(&b).unwrap());
    assert_eq!(info(&a)["role"], "secondary");
    // Both act as primaries apart, each towards a scratch secondary of its own: each starts
    // a generation the other does not know.
    for (p, name) in [(&a, "c.img"), (&b, "d.img")] {
        let other = Served::start(&dir.path().join(name), &["--create", "256K"]);
        let o = sync(p, &other.addr, &[]);
        assert!(o.status.success(), "{}", stderr(&o));
    }
    let (ga, gb) = (
        info(&a)["generation"].clone(),
        info(&b)["generation"].clone(),
    );
    assert_ne!(ga, gb);
    let (a0, b0) = (std::fs::read(&a).unwrap(), std::fs::read(&b).unwrap());
    std::fs::OpenOptions::new()
        .write(true)
        .open(&a)
        .and_then(|f| std::os::unix::fs::FileExt::write_all_at(&f, &[1u8; BLOCK], 4096))
        .unwrap();
    let served = Served::start(&b, &[]);
    let o = sync(&a, &served.addr, &[]);
    assert_eq!(o.status.code(), Some(5), "{}", stderr(&o));
    assert!(stderr(&o).contains("split brain"), "{}", stderr(&o));
    assert_eq!(std::fs::read(&b).unwrap(), b0, "nothing written on refusal");
    let _ = a0;
    let o = sync(&a, &served.addr, &["--discard-secondary"]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert_eq!(std::fs::read(&a).unwrap(), std::fs::read(&b).unwrap());
}

#[test]
fn info_reports_a_torn_record_as_unknown_history() {
    let dir = tempfile::tempdir().unwrap();
    let a = write_file(dir.path(), "a.img", &pseudo_random(16 * BLOCK, 6));
    let sv = write_file(dir.path(), "s.img", &[0u8; 16 * BLOCK]);
    {
        let served = Served::start(&sv, &[]);
        assert!(sync(&a, &served.addr, &[]).status.success());
    }
    let meta = dir.path().join("s.img.mirror-meta");
    let bytes = std::fs::read(&meta).unwrap();
    std::fs::write(&meta, &bytes[..bytes.len() / 2]).unwrap();
    let v = info(&sv);
    assert_eq!(v["state"], "unknown", "{v}");
    // The pair falls back to a full scan and ends equal; the record is whole again.
    std::fs::write(&sv, [0u8; 16 * BLOCK]).unwrap();
    let served = Served::start(&sv, &[]);
    let o = sync(&a, &served.addr, &["--json"]);
    assert!(o.status.success(), "{}", stderr(&o));
    drop(served);
    assert_eq!(std::fs::read(&sv).unwrap(), std::fs::read(&a).unwrap());
    assert_eq!(info(&sv)["state"], "valid");
}

/// `mirror serve` is stopped by `sig` and started again on the same port while a library
/// primary (in this process) keeps writing: the same session reconnects and resyncs from its
/// dirty map, because the secondary's record said which session it follows.
fn secondary_restart_resumes(sig: &str) {
    use mirror_core::{BlockSize, FileVolume, LinkState, Primary, PrimaryConfig, ResyncMode};
    let dir = tempfile::tempdir().unwrap();
    let blocks = 2048u64;
    let a = write_file(
        dir.path(),
        "a.img",
        &pseudo_random(blocks as usize * BLOCK, 7),
    );
    let sv = write_file(dir.path(), "s.img", &vec![0u8; blocks as usize * BLOCK]);
    let port = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().port()
    };
    let listen = format!("127.0.0.1:{port}");
    let start = || {
        let mut c = mirror()
            .args(["serve", "--volume", s(&sv), "--listen", &listen])
            .args(["--link-timeout", "2s"])
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let mut line = String::new();
        BufReader::new(c.stdout.take().unwrap())
            .read_line(&mut line)
            .unwrap();
        assert!(line.starts_with("listening on"), "{line:?}");
        c
    };
    let mut sec = start();
    let vol = std::sync::Arc::new(FileVolume::open(&a, BlockSize::new(4096).unwrap()).unwrap());
    let mut cfg = PrimaryConfig::new(listen.clone());
    cfg.link_timeout = Duration::from_secs(2);
    let p = Primary::open(vol, cfg).unwrap();
    let wait = |what: &str, f: &dyn Fn() -> bool| {
        let deadline = Instant::now() + Duration::from_secs(30);
        while !f() {
            assert!(Instant::now() < deadline, "timed out waiting for {what}");
            std::thread::sleep(Duration::from_millis(20));
        }
    };
    let coherent = || {
        let s = p.status();
        s.state == LinkState::Connected
            && s.map_valid
            && s.dirty_regions == 0
            && s.pending_writes == 0
    };
    wait("the first full scan", &coherent);
    assert_eq!(p.status().last_report.unwrap().mode, ResyncMode::FullScan);
    signal(&sec, sig);
    let _ = wait_exit(&mut sec);
    for i in 0..40u64 {
        let _ = p.write(
            (i * 37 % blocks) * BLOCK as u64,
            &pseudo_random(BLOCK, 100 + i),
        );
    }
    sec = start();
    wait("the resync after the restart", &|| {
        p.status().connections >= 2 && coherent()
    });
    let r = p.status().last_report.unwrap();
    assert_eq!(r.mode, ResyncMode::DirtyMap, "{r:?}");
    // 40 writes, each in a region of 16 blocks: not the whole volume.
    assert!(r.blocks <= 40 * 16 && r.blocks < blocks, "{r:?}");
    p.close().unwrap();
    signal(&sec, "-TERM");
    let _ = wait_exit(&mut sec);
    assert_eq!(std::fs::read(&sv).unwrap(), std::fs::read(&a).unwrap());
}

#[test]
fn a_secondary_restarted_by_sigterm_resumes_without_a_full_scan() {
    secondary_restart_resumes("-TERM");
}

#[test]
fn a_secondary_killed_with_sigkill_resumes_without_a_full_scan() {
    secondary_restart_resumes("-KILL");
}
