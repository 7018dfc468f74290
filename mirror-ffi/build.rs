//! Gives libmirror.so its SONAME, `libmirror.so.MAJOR` (`libmirror.so.0` today), so programs
//! linked with `-lmirror` record that name (DT_NEEDED) and keep loading across compatible
//! releases, as with any system library. install.sh installs the versioned file and its links.
//!
//! One link argument rather than cargo-c: cargo-c would also write the .pc file and the links,
//! but install.sh already does both, and compiling cargo-c from source costs CI many minutes
//! on two cores for what this one line does.
//!
//! Nothing is written outside OUT_DIR: whoever links a program to the library of a build
//! directory gives it the `libmirror.so.0` name itself — install.sh in its prefix (the nbdkit
//! plugin, the Python tests), the C test harness in a directory of its own.

fn main() {
    println!("cargo:rerun-if-changed=build.rs");
    if std::env::var("CARGO_CFG_TARGET_OS").as_deref() != Ok("linux") {
        return;
    }
    let major = std::env::var("CARGO_PKG_VERSION_MAJOR").unwrap();
    println!("cargo:rustc-cdylib-link-arg=-Wl,-soname,libmirror.so.{major}");
}
