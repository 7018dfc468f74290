//! Drives the C tests: compiles the C programs under `tests/c/` with
//! `gcc -Wall -Wextra -Werror` against `include/mirror.h`, links them once to `libmirror.so`
//! and once to `libmirror.a` (the ones Cargo built for this test run), and runs them; runs them
//! under valgrind; checks the committed header and the README's C example.
//!
//! Valgrind is skipped, with a message, when it is not installed, unless
//! `MIRROR_REQUIRE_VALGRIND=1` (CI) makes that a failure. The header check is skipped the same
//! way when the pinned cbindgen is not installed (CI runs `mirror-ffi/gen-header.sh --check`).

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

const C_FLAGS: &[&str] = &[
    "-std=c11",
    "-Wall",
    "-Wextra",
    "-Werror",
    "-Wpedantic",
    "-g",
];
/// What a Rust staticlib needs from the system when linked into a C program.
const NATIVE_STATIC_LIBS: &[&str] = &["-lgcc_s", "-lutil", "-lrt", "-lpthread", "-lm", "-ldl"];
const CBINDGEN_VERSION: &str = "0.29.4";

fn crate_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn repo_root() -> PathBuf {
    crate_dir().parent().unwrap().to_path_buf()
}

/// Where Cargo put the `libmirror.so` and `libmirror.a` of this build. `cargo test` builds the
/// library unit with all its crate types into `deps/` beside this test binary (without copying
/// them up to the profile directory, as `cargo build` does), so they are always this build's.
fn lib_dir() -> PathBuf {
    let exe = std::env::current_exe().unwrap();
    let deps = exe.parent().unwrap();
    let has_libs = |d: &Path| {
        ["libmirror.so", "libmirror.a"]
            .iter()
            .all(|l| d.join(l).exists())
    };
    if has_libs(deps) {
        return deps.to_path_buf();
    }
    let profile = deps.parent().unwrap();
    assert!(
        has_libs(profile),
        "libmirror.so and libmirror.a are in neither {} nor {}",
        deps.display(),
        profile.display()
    );
    profile.to_path_buf()
}

/// A directory that holds this build's `libmirror.so` under the names a program linked to it
/// uses: `libmirror.so` (what `-lmirror` finds at link time) and its SONAME `libmirror.so.0`
/// (what the program then asks the loader for), as an installed library has them. Cargo's own
/// output directories are left alone; the shared programs link with `-L` and a run path here.
fn shared_lib_dir() -> &'static Path {
    static DIR: std::sync::OnceLock<PathBuf> = std::sync::OnceLock::new();
    DIR.get_or_init(|| {
        let dir = Path::new(env!("CARGO_TARGET_TMPDIR"))
            .join("c_api")
            .join("lib");
        std::fs::create_dir_all(&dir).unwrap();
        let target = lib_dir().join("libmirror.so");
        let soname = format!("libmirror.so.{}", env!("CARGO_PKG_VERSION_MAJOR"));
        for name in [soname.as_str(), "libmirror.so"] {
            // Made under a temporary name and renamed over the old link: a program another
            // test process is running keeps a valid path throughout.
            let tmp = dir.join(format!("{name}.{}", std::process::id()));
            let _ = std::fs::remove_file(&tmp);
            std::os::unix::fs::symlink(&target, &tmp).unwrap();
            std::fs::rename(&tmp, dir.join(name)).unwrap();
        }
        dir
    })
}

fn scratch(name: &str) -> PathBuf {
    let dir = Path::new(env!("CARGO_TARGET_TMPDIR"))
        .join("c_api")
        .join(name);
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

fn have(tool: &str) -> bool {
    Command::new(tool)
        .arg("--version")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

fn cc() -> String {
    std::env::var("CC").unwrap_or_else(|_| "gcc".to_owned())
}

#[derive(Clone, Copy, Debug, PartialEq)]
enum Link {
    Shared,
    Static,
}

/// Compiles `tests/c/<program>.c` into `dir`, linked as `link` says.
fn compile(program: &str, link: Link, dir: &Path) -> PathBuf {
    let libs = lib_dir();
    let out = dir.join(format!("{program}-{link:?}").to_lowercase());
    let mut cmd = Command::new(cc());
    cmd.args(C_FLAGS)
        .arg("-I")
        .arg(repo_root().join("include"))
        .arg(format!(
            "-DEXPECTED_VERSION=\"{}\"",
            env!("CARGO_PKG_VERSION")
        ))
        .arg("-o")
        .arg(&out)
        .arg(crate_dir().join("tests/c").join(format!("{program}.c")));
    match link {
        Link::Shared => {
            let shared = shared_lib_dir();
            cmd.arg(format!("-L{}", shared.display()))
                .arg("-lmirror")
                .arg(format!("-Wl,-rpath,{}", shared.display()));
        }
        Link::Static => {
            cmd.arg(libs.join("libmirror.a"));
        }
    }
    cmd.args(NATIVE_STATIC_LIBS);
    let output = cmd.output().expect("run the C compiler");
    assert!(
        output.status.success(),
        "compiling {program} ({link:?}) failed: {cmd:?}\n{}",
        String::from_utf8_lossy(&output.stderr)
    );
    if link == Link::Static {
        assert_not_linked_to_libmirror_so(&out);
    }
    if link == Link::Shared {
        assert_needs_the_soname(&out);
    }
    out
}

/// A program linked with `-lmirror` records the SONAME, not the unversioned link name.
fn assert_needs_the_soname(exe: &Path) {
    let Ok(out) = Command::new("readelf").arg("-d").arg(exe).output() else {
        return;
    };
    let text = String::from_utf8_lossy(&out.stdout);
    let soname = format!("[libmirror.so.{}]", env!("CARGO_PKG_VERSION_MAJOR"));
    assert!(
        text.lines()
            .any(|l| l.contains("(NEEDED)") && l.contains(&soname)),
        "{} does not need {soname}:\n{text}",
        exe.display()
    );
}

/// A statically linked program must not need libmirror.so at run time.
fn assert_not_linked_to_libmirror_so(exe: &Path) {
    if let Ok(out) = Command::new("ldd").arg(exe).output() {
        let text = String::from_utf8_lossy(&out.stdout);
        assert!(
            !text.contains("libmirror"),
            "{} needs libmirror.so:\n{text}",
            exe.display()
        );
    }
}

/// Runs `cmd` with a deadline, returning its output; kills it when the deadline passes.
///
/// `LD_LIBRARY_PATH` is removed: Cargo sets it for tests to directories that may hold an
/// older `libmirror.so` (the one `cargo build` copied up), and it would take precedence over
/// the run path the programs are linked with.
fn run(mut cmd: Command, timeout: Duration) -> Output {
    cmd.env_remove("LD_LIBRARY_PATH");
    let mut child = cmd
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("spawn {cmd:?}: {e}"));
    let start = Instant::now();
    // Drain the pipes on threads so a chatty child cannot block on a full pipe.
    let mut so = child.stdout.take().unwrap();
    let mut se = child.stderr.take().unwrap();
    let t_out = std::thread::spawn(move || {
        let mut v = Vec::new();
        std::io::Read::read_to_end(&mut so, &mut v).ok();
        v
    });
    let t_err = std::thread::spawn(move || {
        let mut v = Vec::new();
        std::io::Read::read_to_end(&mut se, &mut v).ok();
        v
    });
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        if start.elapsed() > timeout {
            let _ = child.kill();
            let _ = child.wait();
            panic!(
                "{cmd:?} timed out after {timeout:?}\nstdout:\n{}\nstderr:\n{}",
                String::from_utf8_lossy(&t_out.join().unwrap()),
                String::from_utf8_lossy(&t_err.join().unwrap())
            );
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    Output {
        status,
        stdout: t_out.join().unwrap(),
        stderr: t_err.join().unwrap(),
    }
}

fn expect_success(what: &str, out: &Output) {
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "{what} failed ({})\nstdout:\n{stdout}\nstderr:\n{stderr}",
        out.status
    );
    print!("{stdout}");
}

fn run_program(program: &str, link: Link) {
    let dir = scratch(&format!("{program}-{link:?}"));
    let exe = compile(program, link, &dir);
    for backend in ["sync", "uring"] {
        let mut cmd = Command::new(&exe);
        cmd.arg(backend).env("TMPDIR", &dir);
        let out = run(cmd, Duration::from_secs(120));
        expect_success(&format!("{program} ({link:?}, {backend})"), &out);
    }
}

#[test]
fn c_misuse_returns_error_codes_linked_shared() {
    run_program("misuse", Link::Shared);
}

#[test]
fn c_misuse_returns_error_codes_linked_static() {
    run_program("misuse", Link::Static);
}

#[test]
fn c_pair_link_cut_during_writes_resyncs_from_dirty_map_linked_shared() {
    run_program("pair", Link::Shared);
}

#[test]
fn c_pair_link_cut_during_writes_resyncs_from_dirty_map_linked_static() {
    run_program("pair", Link::Static);
}

#[test]
fn c_secondary_belongs_to_one_volume_and_a_live_session_holds_it() {
    run_program("identity", Link::Shared);
}

#[test]
fn c_handles_are_thread_safe_linked_shared() {
    run_program("threads", Link::Shared);
}

#[test]
fn c_handles_are_thread_safe_linked_static() {
    run_program("threads", Link::Static);
}

#[test]
fn c_programs_run_clean_under_valgrind() {
    if !have("valgrind") {
        assert!(
            std::env::var("MIRROR_REQUIRE_VALGRIND").as_deref() != Ok("1"),
            "valgrind is not installed and MIRROR_REQUIRE_VALGRIND=1"
        );
        println!("skipped: valgrind is not installed (apt-get install -y valgrind)");
        return;
    }
    let dir = scratch("valgrind");
    let supp = crate_dir().join("tests/c/valgrind.supp");
    for program in ["misuse", "pair", "threads", "identity"] {
        let exe = compile(program, Link::Shared, &dir);
        let mut cmd = Command::new("valgrind");
        cmd.args([
            "--error-exitcode=1",
            "--leak-check=full",
            "--errors-for-leak-kinds=definite,indirect,possible",
            "--quiet",
        ])
        .arg(format!("--suppressions={}", supp.display()))
        .arg(&exe)
        .arg("sync")
        .env("TMPDIR", &dir)
        .env("RUST_BACKTRACE", "0");
        let out = run(cmd, Duration::from_secs(600));
        expect_success(&format!("{program} under valgrind"), &out);
    }
}

/// The `#define MIRROR_VERSION_<part> N` value of the committed header.
fn header_macro(header: &str, part: &str) -> String {
    let prefix = format!("#define MIRROR_VERSION_{part} ");
    header
        .lines()
        .find_map(|l| l.strip_prefix(&prefix))
        .unwrap_or_else(|| panic!("no MIRROR_VERSION_{part} in mirror.h"))
        .trim()
        .to_owned()
}

#[test]
fn header_version_macros_match_cargo_toml() {
    let header = std::fs::read_to_string(repo_root().join("include/mirror.h")).unwrap();
    assert_eq!(
        header_macro(&header, "MAJOR"),
        env!("CARGO_PKG_VERSION_MAJOR")
    );
    assert_eq!(
        header_macro(&header, "MINOR"),
        env!("CARGO_PKG_VERSION_MINOR")
    );
    assert_eq!(
        header_macro(&header, "PATCH"),
        env!("CARGO_PKG_VERSION_PATCH")
    );
}

#[test]
fn committed_header_is_what_the_pinned_cbindgen_generates() {
    let version = Command::new("cbindgen")
        .arg("--version")
        .output()
        .ok()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_owned());
    if version.as_deref() != Some(&format!("cbindgen {CBINDGEN_VERSION}")) {
        println!(
            "skipped: cbindgen {CBINDGEN_VERSION} is not installed (found {version:?}); \
             mirror-ffi/gen-header.sh --check installs it and checks"
        );
        return;
    }
    let out = scratch("header").join("mirror.h");
    let mut cmd = Command::new("cbindgen");
    cmd.current_dir(crate_dir())
        .args(["--quiet", "--config", "cbindgen.toml", "--output"])
        .arg(&out)
        .arg(".");
    expect_success("cbindgen", &run(cmd, Duration::from_secs(120)));
    let generated = std::fs::read_to_string(&out).unwrap();
    let committed = std::fs::read_to_string(repo_root().join("include/mirror.h")).unwrap();
    assert!(
        generated == committed,
        "include/mirror.h is stale: run mirror-ffi/gen-header.sh and commit it"
    );
}

#[test]
fn header_compiles_as_cplusplus() {
    if !have("g++") {
        println!("skipped: g++ is not installed");
        return;
    }
    let dir = scratch("cplusplus");
    let src = dir.join("header.cc");
    std::fs::write(
        &src,
        "#include \"mirror.h\"\nint main() { return mirror_version() == nullptr; }\n",
    )
    .unwrap();
    let mut cmd = Command::new("g++");
    cmd.args([
        "-std=c++17",
        "-Wall",
        "-Wextra",
        "-Werror",
        "-fsyntax-only",
        "-I",
    ])
    .arg(repo_root().join("include"))
    .arg(&src);
    expect_success("g++ -fsyntax-only", &run(cmd, Duration::from_secs(60)));
}

/// The body of the first fenced block of `lang` inside the README's `section:c` section.
fn readme_block(readme: &str, lang: &str) -> String {
    let start = readme
        .find("<!-- section:c (ffi) -->")
        .expect("README.md has no <!-- section:c (ffi) --> section");
    let section = &readme[start..];
    let end = section[1..]
        .find("<!-- section:")
        .map_or(section.len(), |e| e + 1);
    let section = &section[..end];
    let fence = format!("```{lang}\n");
    let body = &section[section
        .find(&fence)
        .unwrap_or_else(|| panic!("no ```{lang} block in the C section"))
        + fence.len()..];
    body[..body.find("```").expect("unterminated block")].to_owned()
}

#[test]
fn readme_c_example_compiles_and_runs_as_printed() {
    let readme = std::fs::read_to_string(repo_root().join("README.md")).unwrap();
    let example = readme_block(&readme, "c");
    let file = std::fs::read_to_string(crate_dir().join("examples/readme.c")).unwrap();
    assert_eq!(
        example, file,
        "the README's C example and mirror-ffi/examples/readme.c differ"
    );
    if !have("pkg-config") {
        println!("skipped running the README commands: pkg-config is not installed");
        return;
    }
    // A directory that looks like the root of a checkout, with the example saved as readme.c
    // as the README says; install.sh installs the libraries of this build.
    let dir = scratch("readme");
    let work = dir.join("work");
    std::fs::create_dir_all(&work).unwrap();
    std::os::unix::fs::symlink(crate_dir(), work.join("mirror-ffi")).unwrap();
    std::os::unix::fs::symlink(repo_root().join("include"), work.join("include")).unwrap();
    std::fs::write(work.join("readme.c"), &example).unwrap();
    let home = dir.join("home");
    std::fs::create_dir_all(&home).unwrap();
    let commands = readme_block(&readme, "sh");
    let mut cmd = Command::new("sh");
    cmd.arg("-eux")
        .arg("-c")
        .arg(&commands)
        .current_dir(&work)
        .env("HOME", &home)
        .env("TMPDIR", &dir)
        .env("MIRROR_LIB_DIR", lib_dir());
    expect_success(
        "the README's C commands",
        &run(cmd, Duration::from_secs(120)),
    );
}
