//! The plugin's version string, one place for `--version`, the start-up log line and Status.
//!
//! `SSHFS_BUILD_VERSION` set at build time overrides Cargo's package version
//! (`SSHFS_BUILD_VERSION=1.2.3 ./build-rootfs.sh`): release tags, and the upgrade test's two
//! builds that must report different versions from the same sources. It is read with
//! `option_env!`, so cargo rebuilds when it changes.

/// This build's version.
pub const VERSION: &str = match option_env!("SSHFS_BUILD_VERSION") {
    Some(v) if !v.is_empty() => v,
    _ => env!("CARGO_PKG_VERSION"),
};
