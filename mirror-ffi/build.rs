//! Gives libmirror.so its SONAME, `libmirror.so.MAJOR` (`libmirror.so.0` today), so programs
//! linked with `-lmirror` record that name (DT_NEEDED) and keep loading across compatible
//! releases, as with any system library. install.sh installs the versioned file and its links.
//!
//! One link argument rather than cargo-c: cargo-c would also write the .pc file and the links,
//! but install.sh already does both, and compiling cargo-c from source costs CI many minutes
//! on two cores for what this one line does.
//!
//! A program linked with `-lmirror` against the build directory now asks the loader for
//! `libmirror.so.0`, so the link `libmirror.so.0 -> libmirror.so` is made beside the library in
//! the profile directory and its `deps/` (where `cargo test` leaves it and the C tests link it).

use std::path::{Path, PathBuf};

fn main() {
    println!("cargo:rerun-if-changed=build.rs");
    if std::env::var("CARGO_CFG_TARGET_OS").as_deref() != Ok("linux") {
        return;
    }
    let major = std::env::var("CARGO_PKG_VERSION_MAJOR").unwrap();
    let soname = format!("libmirror.so.{major}");
    println!("cargo:rustc-cdylib-link-arg=-Wl,-soname,{soname}");

    // OUT_DIR is <target>/<profile>/build/mirror-ffi-<hash>/out.
    let out = PathBuf::from(std::env::var("OUT_DIR").unwrap());
    if let Some(profile) = out.ancestors().nth(3) {
        for dir in [profile.to_path_buf(), profile.join("deps")] {
            link_soname(&dir, &soname);
        }
    }
}

fn link_soname(dir: &Path, soname: &str) {
    let link = dir.join(soname);
    if std::fs::read_link(&link).is_ok_and(|t| t == Path::new("libmirror.so")) {
        return;
    }
    let _ = std::fs::remove_file(&link);
    if std::fs::create_dir_all(dir).is_ok() {
        if let Err(e) = std::os::unix::fs::symlink("libmirror.so", &link) {
            println!("cargo:warning=cannot link {}: {e}", link.display());
        }
    }
}
