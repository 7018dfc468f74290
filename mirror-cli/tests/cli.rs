//! The `mirror` command as an operator runs it: the built binary, real files, real TCP on
//! loopback. Digests are checked against independent computations (a bitwise CRC-32 written
//! here, coreutils' md5sum and sha1sum), never against the engine's own code.

use std::io::{BufRead, BufReader, Write};
use std::net::TcpStream;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::mpsc::{channel, Receiver, RecvTimeoutError};
use std::time::{Duration, Instant};

use serde_json::Value;

mod common;
use common::{mirror, pseudo_random, run, s, stderr};

const BLOCK: usize = 4096;

fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

/// Asserts a failure with exit `code` and exactly one stderr line `mirror: ...`.
fn assert_one_line_error(o: &Output, code: i32) -> String {
    let err = stderr(o);
    assert_eq!(o.status.code(), Some(code), "stderr: {err}");
    let lines: Vec<&str> = err.lines().collect();
    assert_eq!(lines.len(), 1, "one line expected, got {err:?}");
    assert!(lines[0].starts_with("mirror: "), "{err:?}");
    assert!(!err.contains("panicked"), "{err:?}");
    lines[0].to_owned()
}

/// The zlib/IEEE CRC-32, bit by bit: slow, obviously right, independent of crc32fast.
fn crc32_reference(data: &[u8]) -> u32 {
    let mut crc = 0xffff_ffffu32;
    for &b in data {
        crc ^= b as u32;
        for _ in 0..8 {
            crc = if crc & 1 != 0 {
                (crc >> 1) ^ 0xedb8_8320
            } else {
                crc >> 1
            };
        }
    }
    !crc
}

/// Hex digest of `data` by a coreutils tool (`md5sum`, `sha1sum`).
fn coreutils_digest(tool: &str, data: &[u8]) -> String {
    let mut child = Command::new(tool)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("{tool}: {e}"));
    child.stdin.take().unwrap().write_all(data).unwrap();
    let out = child.wait_with_output().unwrap();
    String::from_utf8(out.stdout).unwrap()[..]
        .split_whitespace()
        .next()
        .unwrap()
        .to_owned()
}

fn expected_digests(algorithm: &str, data: &[u8], block: usize) -> Vec<String> {
    data.chunks(block)
        .map(|b| match algorithm {
            "crc32" => format!("{:08x}", crc32_reference(b)),
            "md5" => coreutils_digest("md5sum", b),
            "sha1" => coreutils_digest("sha1sum", b),
            _ => unreachable!(),
        })
        .collect()
}

fn write_file(dir: &Path, name: &str, data: &[u8]) -> PathBuf {
    let p = dir.join(name);
    std::fs::write(&p, data).unwrap();
    p
}

#[test]
fn scan_digests_equal_independent_computation_for_every_algorithm() {
    let dir = tempfile::tempdir().unwrap();
    // Ten whole blocks and a partial last one, whose digest covers only the bytes that exist.
    let data = pseudo_random(10 * BLOCK + 123, 7);
    let path = write_file(dir.path(), "v.img", &data);
    for algorithm in ["crc32", "md5", "sha1"] {
        let want = expected_digests(algorithm, &data, BLOCK);
        for io in ["sync", "uring"] {
            let o = run(&["scan", s(&path), "--algorithm", algorithm, "--io", io]);
            assert!(o.status.success(), "{}", stderr(&o));
            let got: Vec<(String, String)> = stdout(&o)
                .lines()
                .map(|l| {
                    let (i, d) = l.split_once(' ').expect("INDEX HEXDIGEST");
                    (i.to_owned(), d.to_owned())
                })
                .collect();
            assert_eq!(got.len(), 11, "{algorithm} {io}");
            for (i, (index, digest)) in got.iter().enumerate() {
                assert_eq!(index, &i.to_string());
                assert_eq!(digest, &want[i], "{algorithm} {io} block {i}");
            }
        }
    }
}

#[test]
fn scan_honours_the_block_size() {
    let dir = tempfile::tempdir().unwrap();
    let data = pseudo_random(8 * 512, 3);
    let path = write_file(dir.path(), "v.img", &data);
    let o = run(&[
        "scan",
        s(&path),
        "--algorithm",
        "crc32",
        "--block-size",
        "512",
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    let want = expected_digests("crc32", &data, 512);
    let got: Vec<String> = stdout(&o)
        .lines()
        .map(|l| l.split(' ').nth(1).unwrap().to_owned())
        .collect();
    assert_eq!(got, want);
}

#[test]
fn scan_json_lists_every_block_in_order() {
    let dir = tempfile::tempdir().unwrap();
    let data = pseudo_random(5 * BLOCK + 1, 11);
    let path = write_file(dir.path(), "v.img", &data);
    let o = run(&["scan", s(&path), "--algorithm", "sha1", "--json"]);
    assert!(o.status.success(), "{}", stderr(&o));
    let v: Value = serde_json::from_slice(&o.stdout).expect("one JSON object");
    assert_eq!(v["algorithm"], "sha1");
    assert_eq!(v["block_size"], 4096);
    assert_eq!(v["size"], (5 * BLOCK + 1) as u64);
    assert_eq!(v["blocks"], 6);
    let digests: Vec<String> = v["digests"]
        .as_array()
        .unwrap()
        .iter()
        .map(|d| d.as_str().unwrap().to_owned())
        .collect();
    assert_eq!(digests, expected_digests("sha1", &data, BLOCK));
}

#[test]
fn scan_of_an_empty_volume_prints_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let path = write_file(dir.path(), "empty.img", &[]);
    let o = run(&["scan", s(&path)]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert_eq!(stdout(&o), "");
}

#[test]
fn bad_arguments_give_one_line_errors_and_exit_2() {
    let dir = tempfile::tempdir().unwrap();
    let path = write_file(dir.path(), "v.img", &pseudo_random(BLOCK, 1));
    let p = s(&path);
    let cases: Vec<Vec<&str>> = vec![
        vec![],
        vec!["frobnicate"],
        vec!["scan"],
        vec!["scan", p, "--algorithm", "sha256"],
        vec!["scan", p, "--block-size", "3000"],
        vec!["scan", p, "--block-size", "2M"],
        vec!["scan", p, "--io", "magic"],
        vec!["scan", p, "--no-such-flag"],
        vec!["sync", p],
        vec!["sync", p, "--peer", "127.0.0.1:1", "--compare", "both"],
        vec![
            "verify",
            p,
            "--peer",
            "127.0.0.1:1",
            "--link-timeout",
            "soon",
        ],
        vec!["serve", "--volume", p],
        vec![
            "serve",
            "--volume",
            p,
            "--listen",
            "127.0.0.1:0",
            "--create",
            "12Q",
        ],
        vec!["primary", "--volume", p, "--peer", "127.0.0.1:1"],
        vec![
            "primary",
            "--volume",
            p,
            "--peer",
            "127.0.0.1:1",
            "--interval",
            "0s",
        ],
        vec![
            "primary",
            "--volume",
            p,
            "--peer",
            "127.0.0.1:1",
            "--interval",
            "1s",
            "--rate",
            "-3",
        ],
        vec!["demo", "--size", "1000"],
        vec!["sync", p, "--peer", "127.0.0.1:1", "--resync-min-rate", "0"],
        // A floor above the ceiling.
        vec![
            "sync",
            p,
            "--peer",
            "127.0.0.1:1",
            "--resync-min-rate",
            "64",
            "--resync-max-rate",
            "8",
        ],
    ];
    for args in cases {
        let o = run(&args);
        let line = assert_one_line_error(&o, 2);
        assert!(line.len() > "mirror: ".len() + 10, "{args:?}: {line}");
    }
}

#[test]
fn help_and_version_succeed() {
    for args in [&["--help"][..], &["--version"], &["sync", "--help"]] {
        let o = run(args);
        assert!(o.status.success(), "{args:?}");
        assert!(!stdout(&o).is_empty());
    }
}

#[test]
fn a_missing_volume_is_an_io_error_exit_3() {
    let o = run(&["scan", "/nonexistent/volume.img"]);
    let line = assert_one_line_error(&o, 3);
    assert!(line.contains("/nonexistent/volume.img"), "{line}");
}

#[test]
fn a_missing_secret_file_is_an_io_error_exit_3() {
    let dir = tempfile::tempdir().unwrap();
    let path = write_file(dir.path(), "v.img", &pseudo_random(BLOCK, 1));
    let o = run(&[
        "sync",
        s(&path),
        "--peer",
        "127.0.0.1:1",
        "--secret-file",
        "/nonexistent/secret",
    ]);
    assert_one_line_error(&o, 3);
}

#[test]
fn serve_refuses_a_non_loopback_address_without_tls() {
    let dir = tempfile::tempdir().unwrap();
    let vol = dir.path().join("s.img");
    let o = run(&[
        "serve",
        "--volume",
        s(&vol),
        "--listen",
        "0.0.0.0:0",
        "--create",
        "1M",
    ]);
    let line = assert_one_line_error(&o, 2);
    assert!(
        line.contains("without TLS") && line.contains("--allow-insecure"),
        "{line}"
    );
    assert!(
        !vol.exists(),
        "nothing is created when the listener is refused"
    );
}

/// A `mirror serve` child, ended with SIGTERM when dropped.
struct Served {
    child: Child,
    addr: String,
    /// Its stdout after the `listening on` line.
    out: Option<BufReader<std::process::ChildStdout>>,
}

impl Served {
    fn start(volume: &Path, extra: &[&str]) -> Served {
        let mut child = mirror()
            .args(["serve", "--volume", s(volume), "--listen", "127.0.0.1:0"])
            .args(extra)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let mut line = String::new();
        let mut out = BufReader::new(child.stdout.take().unwrap());
        out.read_line(&mut line).unwrap();
        let addr = match line.trim().strip_prefix("listening on ") {
            Some(a) => a.to_owned(),
            None => {
                let _ = child.kill();
                let out = child.wait_with_output().unwrap();
                panic!("serve said {line:?}; stderr {}", stderr(&out));
            }
        };
        Served {
            child,
            addr,
            out: Some(out),
        }
    }

    /// The lines it prints after `listening on`, as they come.
    fn lines(&mut self) -> Receiver<String> {
        let (tx, rx) = channel();
        let out = self.out.take().unwrap();
        std::thread::spawn(move || {
            for line in out.lines().map_while(Result::ok) {
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        rx
    }

    /// SIGTERM, then the exit code (None: it did not exit within 10 s).
    fn terminate(&mut self) -> Option<i32> {
        terminate(&mut self.child)
    }
}

impl Drop for Served {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

fn terminate(child: &mut Child) -> Option<i32> {
    Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(60);
    while Instant::now() < deadline {
        if let Some(st) = child.try_wait().unwrap() {
            return st.code();
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    None
}

#[test]
fn serve_creates_a_sparse_volume_prints_its_address_and_exits_cleanly_on_sigterm() {
    let dir = tempfile::tempdir().unwrap();
    let vol = dir.path().join("s.img");
    let mut served = Served::start(&vol, &["--create", "8M"]);
    assert_eq!(std::fs::metadata(&vol).unwrap().len(), 8 << 20);
    assert!(!served.addr.ends_with(":0"), "the bound port is printed");
    TcpStream::connect(&served.addr).expect("serve listens where it says");
    assert_eq!(served.terminate(), Some(0));
}

#[test]
fn serve_exits_cleanly_on_sigint() {
    let dir = tempfile::tempdir().unwrap();
    let vol = dir.path().join("s.img");
    let mut served = Served::start(&vol, &["--create", "1M"]);
    let child = &mut served.child;
    Command::new("kill")
        .args(["-INT", &child.id().to_string()])
        .status()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(60);
    let code = loop {
        if let Some(st) = child.try_wait().unwrap() {
            break st.code();
        }
        assert!(Instant::now() < deadline, "serve did not stop on SIGINT");
        std::thread::sleep(Duration::from_millis(20));
    };
    assert_eq!(code, Some(0));
}

/// A primary file and a secondary file that differs in `blocks`.
fn pair(dir: &Path, size_blocks: usize, differ: &[usize]) -> (PathBuf, PathBuf, Vec<u8>) {
    let data = pseudo_random(size_blocks * BLOCK, 42);
    let p = write_file(dir, "primary.img", &data);
    let sdata = data.clone();
    let sp = write_file(dir, "secondary.img", &sdata);
    let f = std::fs::File::options().write(true).open(&sp).unwrap();
    for &b in differ {
        f.write_all_at(&pseudo_random(BLOCK, 1000 + b as u64), (b * BLOCK) as u64)
            .unwrap();
    }
    (p, sp, data)
}

fn json(o: &Output) -> Value {
    serde_json::from_slice(&o.stdout)
        .unwrap_or_else(|e| panic!("{e}: {:?} / {}", stdout(o), stderr(o)))
}

#[test]
fn verify_lists_mismatched_ranges_then_sync_repairs_them() {
    let dir = tempfile::tempdir().unwrap();
    let (p, sp, data) = pair(dir.path(), 64, &[3, 4, 5, 10]);
    let served = Served::start(&sp, &[]);
    let peer = served.addr.as_str();

    let o = run(&["verify", s(&p), "--peer", peer]);
    assert_eq!(o.status.code(), Some(1), "{}", stderr(&o));
    let out = stdout(&o);
    assert!(out.contains("mismatched blocks 3-5 (3 blocks)"), "{out}");
    assert!(out.contains("mismatched block 10\n"), "{out}");
    assert!(out.contains("incoherent: 4 of 64 blocks differ"), "{out}");

    let o = run(&["verify", s(&p), "--peer", peer, "--json"]);
    assert_eq!(o.status.code(), Some(1), "{}", stderr(&o));
    let v = json(&o);
    assert_eq!(v["mode"], "verify");
    assert_eq!(v["mismatched"], 4);
    assert_eq!(v["coherent"], false);
    assert_eq!(
        v["mismatched_ranges"],
        serde_json::json!([{"start": 3, "count": 3}, {"start": 10, "count": 1}])
    );

    let o = run(&["sync", s(&p), "--peer", peer, "--json"]);
    assert!(o.status.success(), "{}", stderr(&o));
    let v = json(&o);
    for field in [
        "mode",
        "blocks",
        "mismatched",
        "bytes_sent",
        "bytes_received",
        "seconds",
    ] {
        assert!(!v[field].is_null(), "{field} missing from {v}");
    }
    assert_eq!(v["mode"], "full-scan");
    assert_eq!(v["blocks"], 64);
    assert_eq!(v["mismatched"], 4);
    assert_eq!(v["blocks_sent"], 4);
    assert!(v["bytes_sent"].as_u64().unwrap() >= 4 * BLOCK as u64);

    let o = run(&["verify", s(&p), "--peer", peer]);
    assert_eq!(o.status.code(), Some(0), "{}", stdout(&o));
    assert!(stdout(&o).contains("coherent"));
    drop(served);
    assert_eq!(std::fs::read(&sp).unwrap(), data);
}

#[test]
fn sync_repairs_with_every_algorithm_and_both_compare_sides() {
    for algorithm in ["crc32", "md5", "sha1"] {
        for compare in ["primary", "secondary"] {
            let dir = tempfile::tempdir().unwrap();
            let (p, sp, data) = pair(dir.path(), 200, &[0, 7, 99, 199]);
            let served = Served::start(&sp, &["--io", "sync"]);
            let common = [
                "--peer",
                served.addr.as_str(),
                "--algorithm",
                algorithm,
                "--compare",
                compare,
                "--json",
            ];
            let o = mirror().arg("sync").arg(&p).args(common).output().unwrap();
            assert!(o.status.success(), "{algorithm}/{compare}: {}", stderr(&o));
            let v = json(&o);
            assert_eq!(v["algorithm"], algorithm);
            assert_eq!(v["compare"], compare);
            assert_eq!(v["mismatched"], 4, "{algorithm}/{compare}: {v}");
            let o = mirror()
                .arg("verify")
                .arg(&p)
                .args(common)
                .output()
                .unwrap();
            assert_eq!(o.status.code(), Some(0), "{algorithm}/{compare}: {v}");
            drop(served);
            assert_eq!(std::fs::read(&sp).unwrap(), data, "{algorithm}/{compare}");
        }
    }
}

#[test]
fn a_secret_is_required_and_checked() {
    let dir = tempfile::tempdir().unwrap();
    let (p, sp, _) = pair(dir.path(), 16, &[1]);
    let good = write_file(dir.path(), "good.secret", b"correct horse battery\n");
    let bad = write_file(dir.path(), "bad.secret", b"incorrect donkey\n");
    let served = Served::start(&sp, &["--secret-file", s(&good)]);
    let peer = served.addr.as_str();
    let before = std::fs::read(&sp).unwrap();

    let o = run(&[
        "sync",
        s(&p),
        "--peer",
        peer,
        "--secret-file",
        s(&bad),
        "--connect-timeout",
        "2s",
    ]);
    let line = assert_one_line_error(&o, 5);
    assert!(line.contains("authentication"), "{line}");
    let o = run(&["sync", s(&p), "--peer", peer, "--connect-timeout", "2s"]);
    assert_one_line_error(&o, 5);
    assert_eq!(std::fs::read(&sp).unwrap(), before, "nothing written");

    let o = run(&["sync", s(&p), "--peer", peer, "--secret-file", s(&good)]);
    assert!(o.status.success(), "{}", stderr(&o));
}

#[test]
fn a_size_mismatch_is_refused_with_exit_5() {
    let dir = tempfile::tempdir().unwrap();
    let p = write_file(dir.path(), "p.img", &pseudo_random(16 * BLOCK, 5));
    let sp = dir.path().join("s.img");
    let served = Served::start(&sp, &["--create", "32K"]);
    let o = run(&[
        "sync",
        s(&p),
        "--peer",
        &served.addr,
        "--connect-timeout",
        "2s",
    ]);
    let line = assert_one_line_error(&o, 5);
    assert!(
        line.contains("65536") && line.contains("32768"),
        "names both sizes: {line}"
    );
}

#[test]
fn no_secondary_listening_is_a_link_error_exit_4() {
    let dir = tempfile::tempdir().unwrap();
    let p = write_file(dir.path(), "p.img", &pseudo_random(4 * BLOCK, 5));
    // A port that was just free: bind, read it, close.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let peer = format!("127.0.0.1:{port}");
    let o = run(&["verify", s(&p), "--peer", &peer, "--connect-timeout", "1s"]);
    assert_one_line_error(&o, 4);
}

/// Lines of a child's stdout, as they come.
fn lines_of(child: &mut Child) -> Receiver<String> {
    let (tx, rx) = channel();
    let out = child.stdout.take().unwrap();
    std::thread::spawn(move || {
        for line in BufReader::new(out).lines().map_while(Result::ok) {
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    rx
}

/// Waits for a JSON line that `pred` accepts.
fn wait_line(rx: &Receiver<String>, timeout: Duration, pred: impl Fn(&Value) -> bool) -> Value {
    let deadline = Instant::now() + timeout;
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        match rx.recv_timeout(left) {
            Ok(line) => {
                let v: Value = serde_json::from_str(&line).expect("a JSON line");
                if pred(&v) {
                    return v;
                }
            }
            Err(RecvTimeoutError::Timeout) => panic!("no matching line within {timeout:?}"),
            Err(RecvTimeoutError::Disconnected) => panic!("the daemon's stdout closed"),
        }
    }
}

#[test]
fn primary_daemon_resyncs_on_connect_and_repairs_corruption_by_periodic_scan() {
    let dir = tempfile::tempdir().unwrap();
    let (p, sp, data) = pair(dir.path(), 256, &[2, 50]);
    let served = Served::start(&sp, &[]);
    let mut daemon = mirror()
        .args(["primary", "--volume", s(&p), "--peer", &served.addr])
        .args(["--interval", "300ms", "--rate", "100", "--json"])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let rx = lines_of(&mut daemon);
    let first = wait_line(&rx, Duration::from_secs(20), |v| !v["mode"].is_null());
    assert_eq!(first["mode"], "full-scan", "{first}");
    assert_eq!(first["mismatched"], 2, "{first}");

    // Corrupt the secondary's file behind mirror's back.
    let f = std::fs::File::options().write(true).open(&sp).unwrap();
    f.write_all_at(&pseudo_random(BLOCK, 9), 100 * BLOCK as u64)
        .unwrap();
    let repaired = wait_line(&rx, Duration::from_secs(20), |v| {
        v["mode"] == "periodic" && v["mismatched"].as_u64() > Some(0)
    });
    assert_eq!(repaired["mismatched"], 1, "{repaired}");

    assert_eq!(terminate(&mut daemon), Some(0));
    drop(served);
    assert_eq!(std::fs::read(&sp).unwrap(), data);
}

#[test]
fn demo_runs_every_step_and_passes() {
    let o = run(&["demo", "--size", "8M", "--writes", "300", "--seed", "1"]);
    let out = stdout(&o);
    assert!(o.status.success(), "{out}\n{}", stderr(&o));
    assert!(out.contains("demo passed"), "{out}");
    assert!(!out.contains("FAILED"), "{out}");
    for step in ["[1]", "[2]", "[3]", "[4]", "[5]", "[6]", "[7]"] {
        assert!(out.contains(step), "step {step} missing: {out}");
    }
    assert!(out.contains("dirty-map"), "{out}");
    assert!(out.contains("full-scan"), "{out}");
    assert!(out.contains("periodic"), "{out}");
}

/// A loopback TCP proxy the test can cut (drop every connection, refuse new ones) and
/// restore.
struct CutProxy {
    addr: String,
    up: std::sync::Arc<std::sync::atomic::AtomicBool>,
    conns: std::sync::Arc<std::sync::Mutex<Vec<TcpStream>>>,
}

impl CutProxy {
    fn start(target: &str) -> CutProxy {
        use std::sync::atomic::{AtomicBool, Ordering};
        use std::sync::{Arc, Mutex};
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap().to_string();
        let up = Arc::new(AtomicBool::new(true));
        let conns: Arc<Mutex<Vec<TcpStream>>> = Arc::default();
        let (up2, conns2, target) = (up.clone(), conns.clone(), target.to_owned());
        std::thread::spawn(move || {
            for client in listener.incoming().map_while(Result::ok) {
                if !up2.load(Ordering::SeqCst) {
                    continue;
                }
                let Ok(server) = TcpStream::connect(&target) else {
                    continue;
                };
                let mut c = conns2.lock().unwrap();
                c.push(client.try_clone().unwrap());
                c.push(server.try_clone().unwrap());
                for (mut from, mut to) in [
                    (client.try_clone().unwrap(), server.try_clone().unwrap()),
                    (server, client),
                ] {
                    std::thread::spawn(move || {
                        let _ = std::io::copy(&mut from, &mut to);
                        let _ = to.shutdown(std::net::Shutdown::Both);
                    });
                }
            }
        });
        CutProxy { addr, up, conns }
    }

    fn cut(&self) {
        self.up.store(false, std::sync::atomic::Ordering::SeqCst);
        for c in self.conns.lock().unwrap().drain(..) {
            let _ = c.shutdown(std::net::Shutdown::Both);
        }
    }

    fn restore(&self) {
        self.up.store(true, std::sync::atomic::Ordering::SeqCst);
    }
}

/// Nothing tells the daemon of writes: when the link comes back it scans every block, though
/// the same secondary still serves and its map is clean, and repairs long before the hourly
/// periodic scan.
#[test]
fn primary_daemon_scans_fully_when_the_link_comes_back() {
    let dir = tempfile::tempdir().unwrap();
    let (p, sp, _) = pair(dir.path(), 4096, &[]);
    let served = Served::start(&sp, &[]);
    let proxy = CutProxy::start(&served.addr);
    let mut daemon = mirror()
        .args(["primary", "--volume", s(&p), "--peer", &proxy.addr])
        .args(["--interval", "1h", "--json", "--link-timeout", "1s"])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let rx = lines_of(&mut daemon);
    let first = wait_line(&rx, Duration::from_secs(20), |v| !v["mode"].is_null());
    assert_eq!(first["mode"], "full-scan", "{first}");

    proxy.cut();
    wait_line(&rx, Duration::from_secs(20), |v| {
        v["state"] == "disconnected"
    });
    // Another program rewrites 40 blocks of the primary's file.
    let f = std::fs::File::options().write(true).open(&p).unwrap();
    for i in 0..40u64 {
        f.write_all_at(&pseudo_random(BLOCK, 5000 + i), (i * 97 + 3) * BLOCK as u64)
            .unwrap();
    }
    drop(f);
    let restored = Instant::now();
    proxy.restore();
    let repaired = wait_line(&rx, Duration::from_secs(30), |v| {
        v["mode"] == "full-scan" && v["mismatched"].as_u64() > Some(0)
    });
    assert_eq!(repaired["mismatched"], 40, "{repaired}");
    eprintln!(
        "link re-established to repaired pair: {:.2} s",
        restored.elapsed().as_secs_f64()
    );
    assert_eq!(std::fs::read(&sp).unwrap(), std::fs::read(&p).unwrap());
    assert_eq!(terminate(&mut daemon), Some(0));
}

/// `mirror serve --scan-on-connect` leads a scan of its own as the session opens and prints
/// its report; the daemon shows the secondary's report too.
#[test]
fn serve_scan_on_connect_prints_one_event_per_scan_it_leads() {
    let dir = tempfile::tempdir().unwrap();
    let (p, sp, data) = pair(dir.path(), 256, &[7, 99]);
    let mut served = Served::start(
        &sp,
        &[
            "--scan-on-connect",
            "--interval",
            "300ms",
            "--rate",
            "100",
            "--compare",
            "primary",
            "--algorithm",
            "crc32",
            "--json",
        ],
    );
    let mut daemon = mirror()
        .args(["primary", "--volume", s(&p), "--peer", &served.addr])
        .args(["--interval", "1h", "--json"])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let rx = lines_of(&mut daemon);
    let seen = wait_line(&rx, Duration::from_secs(30), |v| {
        v["command"] == "secondary"
    });
    assert_eq!(seen["algorithm"], "crc32", "{seen}");
    assert_eq!(seen["compare"], "primary", "{seen}");
    assert_eq!(seen["blocks"], 256, "{seen}");

    let srx = served.lines();
    let first = wait_line(&srx, Duration::from_secs(30), |v| v["command"] == "serve");
    assert_eq!(first["mode"], "full-scan", "{first}");
    // Corruption while connected: the secondary's periodic scan repairs it.
    let f = std::fs::File::options().write(true).open(&sp).unwrap();
    f.write_all_at(&pseudo_random(BLOCK, 77), 200 * BLOCK as u64)
        .unwrap();
    let periodic = wait_line(&srx, Duration::from_secs(30), |v| {
        v["mode"] == "periodic" && v["mismatched"].as_u64() > Some(0)
    });
    assert_eq!(periodic["mismatched"], 1, "{periodic}");
    assert_eq!(terminate(&mut daemon), Some(0));
    assert_eq!(served.terminate(), Some(0));
    assert_eq!(std::fs::read(&sp).unwrap(), data);
}

#[test]
fn clean_syncs_and_verifies_log_no_warning() {
    // A job's own end closes its link; at -v (info) that must never read as a lost link.
    let dir = tempfile::tempdir().unwrap();
    let a = write_file(dir.path(), "a.img", &pseudo_random(4 << 20, 7));
    let vol = dir.path().join("s.img");
    let served = Served::start(&vol, &["--create", "4M"]);
    for verb in ["sync", "verify"].iter().cycle().take(24) {
        let o = run(&[verb, s(&a), "--peer", &served.addr, "-v"]);
        assert_eq!(o.status.code(), Some(0), "{verb}: {}", stderr(&o));
        let err = stderr(&o);
        assert!(
            !err.contains("WARN") && !err.contains("ERROR"),
            "{verb} logged a warning on a clean run:\n{err}"
        );
    }
    assert_eq!(std::fs::read(&vol).unwrap(), std::fs::read(&a).unwrap());
}
