//! The `mirror` command across a link that must be trustworthy: keygen, mutual TLS, refusals
//! (untrusted peer, plaintext off loopback, a second serve of one volume) and a flood of
//! connections that must neither lock a real sync out nor leak descriptors or threads.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::os::unix::fs::PermissionsExt;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

mod common;
use common::{mirror, pseudo_random, run, s, stderr};

const BLOCK: usize = 4096;

fn assert_one_line_error(o: &Output, code: i32) -> String {
    let err = stderr(o);
    assert_eq!(o.status.code(), Some(code), "stderr: {err}");
    let lines: Vec<&str> = err.lines().collect();
    assert_eq!(lines.len(), 1, "one line expected, got {err:?}");
    assert!(lines[0].starts_with("mirror: "), "{err:?}");
    lines[0].to_owned()
}

/// A primary file and a secondary file differing in every 10th block.
fn pair(dir: &Path, blocks: usize) -> (PathBuf, PathBuf) {
    let data = pseudo_random(blocks * BLOCK, 9);
    let p = dir.join("primary.img");
    std::fs::write(&p, &data).unwrap();
    let mut other = data.clone();
    for b in (0..blocks).step_by(10) {
        other[b * BLOCK..b * BLOCK + 16].copy_from_slice(b"changed-behind!!");
    }
    let sp = dir.join("secondary.img");
    std::fs::write(&sp, &other).unwrap();
    (p, sp)
}

/// `mirror keygen DIR --name NAME`: the key, certificate and printed fingerprint.
fn keygen(dir: &Path, name: &str) -> (PathBuf, PathBuf, String) {
    let o = run(&["keygen", s(dir), "--name", name]);
    assert!(o.status.success(), "{}", stderr(&o));
    let out = String::from_utf8(o.stdout).unwrap();
    let fp = out
        .lines()
        .find_map(|l| l.strip_prefix("fingerprint "))
        .unwrap_or_else(|| panic!("no fingerprint line in {out:?}"))
        .to_owned();
    (
        dir.join(format!("{name}.key")),
        dir.join(format!("{name}.crt")),
        fp,
    )
}

/// The DER bytes of the first PEM certificate in `pem` (base64 decoded here, by hand).
fn pem_to_der(pem: &str) -> Vec<u8> {
    let b64: String = pem
        .lines()
        .skip_while(|l| !l.starts_with("-----BEGIN CERTIFICATE"))
        .skip(1)
        .take_while(|l| !l.starts_with("-----END"))
        .collect();
    let val = |c: u8| -> u32 {
        match c {
            b'A'..=b'Z' => (c - b'A') as u32,
            b'a'..=b'z' => (c - b'a' + 26) as u32,
            b'0'..=b'9' => (c - b'0' + 52) as u32,
            b'+' => 62,
            b'/' => 63,
            _ => panic!("bad base64 {c}"),
        }
    };
    let mut out = Vec::new();
    for chunk in b64.trim_end_matches('=').as_bytes().chunks(4) {
        let mut n = 0u32;
        for (i, &c) in chunk.iter().enumerate() {
            n |= val(c) << (18 - 6 * i);
        }
        let bytes = n.to_be_bytes();
        out.extend_from_slice(&bytes[1..chunk.len()]);
    }
    out
}

fn sha256sum(data: &[u8]) -> String {
    let mut child = Command::new("sha256sum")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    child.stdin.take().unwrap().write_all(data).unwrap();
    let out = child.wait_with_output().unwrap();
    String::from_utf8(out.stdout).unwrap()[..64].to_owned()
}

/// A `mirror serve` child, killed when dropped.
struct Served {
    child: Child,
    addr: String,
}

impl Served {
    fn start(volume: &Path, listen: &str, extra: &[&str]) -> Served {
        Self::start_with(mirror(), volume, listen, extra)
    }

    fn start_with(mut cmd: Command, volume: &Path, listen: &str, extra: &[&str]) -> Served {
        // A process group of its own, so that a wrapper (`ip netns exec`, which forks) and
        // the serve under it end together.
        let mut child = cmd
            .process_group(0)
            .args(["serve", "--volume", s(volume), "--listen", listen])
            .args(extra)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let mut line = String::new();
        BufReader::new(child.stdout.take().unwrap())
            .read_line(&mut line)
            .unwrap();
        let addr = match line.trim().strip_prefix("listening on ") {
            Some(a) => a.to_owned(),
            None => {
                let _ = child.kill();
                let out = child.wait_with_output().unwrap();
                let ps = Command::new("ps")
                    .args(["-eo", "pid,pgid,ppid,cmd"])
                    .output()
                    .unwrap();
                let ps = String::from_utf8_lossy(&ps.stdout)
                    .lines()
                    .filter(|l| l.contains("serve"))
                    .collect::<Vec<_>>()
                    .join("\n");
                panic!("serve said {line:?}; stderr {}\n{ps}", stderr(&out));
            }
        };
        Served { child, addr }
    }

    fn pid(&self) -> u32 {
        self.child.id()
    }
}

impl Drop for Served {
    fn drop(&mut self) {
        let group = format!("-{}", self.child.id());
        let _ = Command::new("kill").args(["-KILL", "--", &group]).status();
        let _ = self.child.wait();
        // Until every process of the group is gone (the volume's lock goes with the last).
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline
            && Command::new("kill")
                .args(["-0", "--", &group])
                .stderr(Stdio::null())
                .status()
                .is_ok_and(|s| s.success())
        {
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

struct Ids {
    _dir: tempfile::TempDir,
    a_key: PathBuf,
    a_crt: PathBuf,
    b_key: PathBuf,
    b_crt: PathBuf,
    c_crt: PathBuf,
}

fn ids() -> Ids {
    let dir = tempfile::tempdir().unwrap();
    let (a_key, a_crt, _) = keygen(dir.path(), "a");
    let (b_key, b_crt, _) = keygen(dir.path(), "b");
    let (_, c_crt, _) = keygen(dir.path(), "c");
    Ids {
        _dir: dir,
        a_key,
        a_crt,
        b_key,
        b_crt,
        c_crt,
    }
}

fn tls_args<'a>(key: &'a Path, crt: &'a Path, trust: &'a Path) -> Vec<&'a str> {
    vec![
        "--tls-cert",
        s(crt),
        "--tls-key",
        s(key),
        "--tls-trust",
        s(trust),
    ]
}

#[test]
fn keygen_writes_a_private_key_and_a_certificate_and_prints_its_fingerprint() {
    let dir = tempfile::tempdir().unwrap();
    let keys = dir.path().join("keys");
    let (key, crt, fp) = keygen(&keys, "site-a");
    let mode = std::fs::metadata(&key).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o600, "the key is private");
    let pem = std::fs::read_to_string(&crt).unwrap();
    assert!(std::fs::read_to_string(&key)
        .unwrap()
        .contains("PRIVATE KEY"));
    assert_eq!(fp, format!("sha256:{}", sha256sum(&pem_to_der(&pem))));

    // Never overwritten.
    let before = std::fs::read(&key).unwrap();
    let o = run(&["keygen", s(&keys), "--name", "site-a"]);
    let line = assert_one_line_error(&o, 2);
    assert!(line.contains("refusing to overwrite"), "{line}");
    assert_eq!(std::fs::read(&key).unwrap(), before);

    // A secret for --secret-file.
    let secret = dir.path().join("mirror.secret");
    let o = run(&["keygen", "--secret", s(&secret)]);
    assert!(o.status.success(), "{}", stderr(&o));
    let bytes = std::fs::read(&secret).unwrap();
    assert_eq!(bytes.len(), 32);
    assert_eq!(
        std::fs::metadata(&secret).unwrap().permissions().mode() & 0o777,
        0o600
    );
    let o = run(&["keygen", "--secret", s(&secret)]);
    assert_one_line_error(&o, 2);
    let o = run(&["keygen"]);
    assert_one_line_error(&o, 2);
}

#[test]
fn sync_and_verify_over_mutual_tls_with_keygen_identities_and_a_secret() {
    let dir = tempfile::tempdir().unwrap();
    let (p, sp) = pair(dir.path(), 256);
    let k = ids();
    let secret = dir.path().join("s.secret");
    assert!(run(&["keygen", "--secret", s(&secret)]).status.success());
    let mut serve_args = tls_args(&k.b_key, &k.b_crt, &k.a_crt);
    serve_args.extend(["--secret-file", s(&secret)]);
    let served = Served::start(&sp, "127.0.0.1:0", &serve_args);
    let mut args = vec!["sync", s(&p), "--peer", served.addr.as_str()];
    args.extend(tls_args(&k.a_key, &k.a_crt, &k.b_crt));
    args.extend(["--secret-file", s(&secret)]);
    let o = run(&args);
    assert!(o.status.success(), "{}", stderr(&o));
    assert_eq!(std::fs::read(&p).unwrap(), std::fs::read(&sp).unwrap());
    args[0] = "verify";
    let o = run(&args);
    assert!(o.status.success(), "{}", stderr(&o));
}

#[test]
fn an_untrusted_peer_or_a_plaintext_primary_is_refused_with_exit_5_and_nothing_written() {
    let dir = tempfile::tempdir().unwrap();
    let (p, sp) = pair(dir.path(), 64);
    let k = ids();
    let before = std::fs::read(&sp).unwrap();
    let served = Served::start(&sp, "127.0.0.1:0", &tls_args(&k.b_key, &k.b_crt, &k.a_crt));
    let peer = served.addr.as_str();
    // The primary's trust file names c, not the secondary's b.
    let mut args = vec!["sync", s(&p), "--peer", peer, "--connect-timeout", "5s"];
    args.extend(tls_args(&k.a_key, &k.a_crt, &k.c_crt));
    let line = assert_one_line_error(&run(&args), 5);
    assert!(line.contains("not in the trust file"), "{line}");
    // The primary presents c's... no: a primary the secondary does not trust (b's own key).
    let mut args = vec!["sync", s(&p), "--peer", peer, "--connect-timeout", "5s"];
    args.extend(tls_args(&k.b_key, &k.b_crt, &k.b_crt));
    let line = assert_one_line_error(&run(&args), 5);
    assert!(line.contains("refused our certificate"), "{line}");
    // No TLS at all.
    let line = assert_one_line_error(
        &run(&["sync", s(&p), "--peer", peer, "--connect-timeout", "5s"]),
        5,
    );
    assert!(line.contains("TLS"), "{line}");
    assert_eq!(std::fs::read(&sp).unwrap(), before, "nothing written");
}

#[test]
fn plaintext_off_loopback_is_refused_before_anything_is_touched() {
    let dir = tempfile::tempdir().unwrap();
    let vol = dir.path().join("s.img");
    let secret = dir.path().join("s.secret");
    std::fs::write(&secret, b"0123456789abcdef0123").unwrap();
    // A secret alone no longer makes plaintext acceptable.
    for extra in [&[][..], &["--secret-file", s(&secret)][..]] {
        let mut args = vec!["serve", "--volume", s(&vol), "--listen", "0.0.0.0:0"];
        args.extend(["--create", "1M"]);
        args.extend(extra);
        let line = assert_one_line_error(&run(&args), 2);
        assert!(line.contains("--allow-insecure"), "{line}");
        assert!(!vol.exists());
    }
    // A secret shorter than 16 bytes is refused.
    std::fs::write(&secret, b"short-secret\n").unwrap();
    let o = run(&[
        "serve",
        "--volume",
        s(&vol),
        "--listen",
        "127.0.0.1:0",
        "--create",
        "1M",
        "--secret-file",
        s(&secret),
    ]);
    let line = assert_one_line_error(&o, 2);
    assert!(line.contains("16 bytes"), "{line}");
}

#[test]
fn a_second_serve_of_the_same_volume_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let vol = dir.path().join("s.img");
    let _first = Served::start(&vol, "127.0.0.1:0", &["--create", "1M"]);
    let o = run(&["serve", "--volume", s(&vol), "--listen", "127.0.0.1:0"]);
    let line = assert_one_line_error(&o, 3);
    assert!(line.contains("in use"), "{line}");
}

fn require(what: &str, ok: bool) -> bool {
    if ok {
        return true;
    }
    if std::env::var_os("CI").is_some() {
        panic!("{what} is required in CI");
    }
    eprintln!("skipped: {what} is not available");
    false
}

fn is_root() -> bool {
    Command::new("id")
        .arg("-u")
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim() == "0")
        .unwrap_or(false)
}

/// A network namespace with a veth pair, removed when dropped.
struct Netns {
    name: String,
}

impl Netns {
    fn new() -> Option<Netns> {
        let name = format!("mirror-tls-{}", std::process::id());
        let ip = |args: &[&str]| {
            Command::new("ip")
                .args(args)
                .status()
                .map(|s| s.success())
                .unwrap_or(false)
        };
        if !ip(&["netns", "add", &name]) {
            return None;
        }
        let ns = Netns { name: name.clone() };
        let inside = |args: &[&str]| {
            let mut a = vec!["netns", "exec", name.as_str(), "ip"];
            a.extend_from_slice(args);
            ip(&a)
        };
        let ok = inside(&["link", "set", "lo", "up"])
            && inside(&[
                "link", "add", "veth0", "type", "veth", "peer", "name", "veth1",
            ])
            && inside(&["addr", "add", "10.213.0.1/24", "dev", "veth0"])
            && inside(&["addr", "add", "10.213.0.2/24", "dev", "veth1"])
            && inside(&["link", "set", "veth0", "up"])
            && inside(&["link", "set", "veth1", "up"]);
        ok.then_some(ns)
    }

    fn cmd(&self) -> Command {
        let mut c = Command::new("ip");
        c.args(["netns", "exec", &self.name, env!("CARGO_BIN_EXE_mirror")]);
        c.env_remove("RUST_LOG");
        c
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        let _ = Command::new("ip")
            .args(["netns", "del", &self.name])
            .status();
    }
}

#[test]
fn on_a_real_interface_plaintext_is_refused_and_tls_works() {
    if !require("root (for a network namespace)", is_root()) {
        return;
    }
    let Some(ns) = Netns::new() else {
        require("ip netns with veth", false);
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let (p, sp) = pair(dir.path(), 64);
    let k = ids();
    // Plaintext serve on the veth address: refused.
    let o = ns
        .cmd()
        .args(["serve", "--volume", s(&sp), "--listen", "10.213.0.1:0"])
        .output()
        .unwrap();
    let line = assert_one_line_error(&o, 2);
    assert!(line.contains("without TLS"), "{line}");
    // With --allow-insecure it listens; a primary without TLS is refused on its side too.
    let served = Served::start_with(ns.cmd(), &sp, "10.213.0.1:0", &["--allow-insecure"]);
    let o = ns
        .cmd()
        .args(["sync", s(&p), "--peer", &served.addr])
        .output()
        .unwrap();
    let line = assert_one_line_error(&o, 2);
    assert!(line.contains("without TLS"), "{line}");
    drop(served);
    // With TLS, across the veth pair.
    let served = Served::start_with(
        ns.cmd(),
        &sp,
        "10.213.0.1:0",
        &tls_args(&k.b_key, &k.b_crt, &k.a_crt),
    );
    let o = ns
        .cmd()
        .args(["sync", s(&p), "--peer", &served.addr])
        .args(tls_args(&k.a_key, &k.a_crt, &k.b_crt))
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", stderr(&o));
    assert_eq!(std::fs::read(&p).unwrap(), std::fs::read(&sp).unwrap());
}

fn count(dir: String) -> usize {
    std::fs::read_dir(dir).map(|d| d.count()).unwrap_or(0)
}

/// Threads of `pid` that mirror started: the kernel's io_uring workers (`iou-*`), which come
/// and go with I/O on their own, are not counted.
fn mirror_threads(pid: u32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/task"))
        .map(|d| {
            d.filter_map(|t| t.ok())
                .filter(|t| {
                    let comm = std::fs::read_to_string(t.path().join("comm")).unwrap_or_default();
                    !comm.starts_with("iou-")
                })
                .count()
        })
        .unwrap_or(0)
}

/// Holds `idle` connections that send nothing and `slow` ones that drip a byte every 200 ms,
/// reopening those the server closes, until `stop`.
fn flood(
    addr: String,
    idle: usize,
    slow: usize,
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
) -> std::thread::JoinHandle<usize> {
    use std::sync::atomic::Ordering;
    std::thread::spawn(move || {
        let open = || {
            let c = TcpStream::connect(&addr).ok()?;
            c.set_nonblocking(true).ok()?;
            Some(c)
        };
        let mut conns: Vec<Option<TcpStream>> = (0..idle + slow).map(|_| open()).collect();
        let mut opened = conns.len();
        let mut buf = [0u8; 64];
        while !stop.load(Ordering::SeqCst) {
            for (i, c) in conns.iter_mut().enumerate() {
                let closed = match c {
                    None => true,
                    Some(s) => {
                        let eof = matches!(s.read(&mut buf), Ok(0));
                        let failed = i >= idle && s.write(&[0x16]).is_err();
                        eof || failed
                    }
                };
                if closed {
                    *c = open();
                    opened += 1;
                }
            }
            std::thread::sleep(Duration::from_millis(200));
        }
        opened
    })
}

#[test]
fn a_flood_of_idle_and_slow_connections_neither_locks_out_a_sync_nor_leaks() {
    if !require(
        "bash",
        Command::new("bash").arg("-c").arg("true").status().is_ok(),
    ) {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let (p, sp) = pair(dir.path(), 2048);
    let k = ids();
    let mut cmd = Command::new("bash");
    cmd.env_remove("RUST_LOG").args([
        "-c",
        "ulimit -n 1024 && exec \"$0\" \"$@\"",
        env!("CARGO_BIN_EXE_mirror"),
    ]);
    let mut extra = tls_args(&k.b_key, &k.b_crt, &k.a_crt);
    extra.extend(["--handshake-timeout", "3s"]);
    let served = Served::start_with(cmd, &sp, "127.0.0.1:0", &extra);
    let pid = served.pid();
    let limits = std::fs::read_to_string(format!("/proc/{pid}/limits")).unwrap();
    assert!(
        limits
            .lines()
            .any(|l| l.starts_with("Max open files") && l.contains(" 1024 ")),
        "{limits}"
    );
    let fds = || count(format!("/proc/{pid}/fd"));
    let threads = || mirror_threads(pid);
    let fds_idle = fds();

    let mut sync_args = vec!["sync", s(&p), "--peer", served.addr.as_str()];
    sync_args.extend(tls_args(&k.a_key, &k.a_crt, &k.b_crt));
    let t = Instant::now();
    let o = run(&sync_args);
    assert!(o.status.success(), "{}", stderr(&o));
    let quiet = t.elapsed();
    // The baseline: after a first session, whose lasting threads (the scan pool) stay.
    let settled = Instant::now() + Duration::from_secs(30);
    while fds() > fds_idle && Instant::now() < settled {
        std::thread::sleep(Duration::from_millis(50));
    }
    let (fds0, threads0) = (fds(), threads());

    // Break the secondary's copy again, then flood and sync.
    let (_, _) = pair(dir.path(), 2048);
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let flooder = flood(served.addr.clone(), 300, 100, stop.clone());
    std::thread::sleep(Duration::from_secs(1));
    let t = Instant::now();
    let o = run(&sync_args);
    let flooded = t.elapsed();
    let peak_fds = fds();
    stop.store(true, std::sync::atomic::Ordering::SeqCst);
    let opened = flooder.join().unwrap();
    assert!(o.status.success(), "sync under the flood: {}", stderr(&o));
    assert_eq!(std::fs::read(&p).unwrap(), std::fs::read(&sp).unwrap());
    assert!(opened >= 400, "the flood opened {opened} connections");
    assert!(peak_fds < 1024, "{peak_fds} descriptors under the flood");
    eprintln!(
        "flood: {opened} connections opened (400 held), sync {:.2}s quiet, {:.2}s flooded, {peak_fds} descriptors at the peak",
        quiet.as_secs_f64(),
        flooded.as_secs_f64()
    );

    // Once the flood ends, every descriptor and thread it cost comes back.
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let (f, th) = (fds(), threads());
        if f <= fds0 && th <= threads0 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "leak: {f} descriptors (were {fds0}), {th} threads (were {threads0})"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}
