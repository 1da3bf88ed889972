//! Debian packages a test needs, installed when the machine lacks them. Std only, so a
//! test binary that needs nothing else of `common` can include this file alone
//! (`tests/scripts.rs`).

/// Installs Debian packages the tests need when the machine lacks them (as root, with
/// apt-get; an `apt-get update` first if the install fails): the README's test command
/// needs nothing but the Rust toolchain. Returns whether the install succeeded.
pub fn apt_install(packages: &[&str]) -> bool {
    use std::os::unix::fs::MetadataExt;
    // Tests of one binary run in parallel and may install at once: one at a time here, and
    // apt-get waits for the dpkg lock another process holds instead of failing.
    static ONE_AT_A_TIME: std::sync::Mutex<()> = std::sync::Mutex::new(());
    let _turn = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    let apt = |args: &[&str]| {
        std::process::Command::new("apt-get")
            .args(["-o", "DPkg::Lock::Timeout=300"])
            .args(args)
            .env("DEBIAN_FRONTEND", "noninteractive")
            .status()
            .map(|s| s.success())
            .unwrap_or(false)
    };
    let mut install = vec!["install", "-y", "--no-install-recommends"];
    install.extend_from_slice(packages);
    // Root: /proc/self belongs to this process's effective user.
    let root = std::fs::metadata("/proc/self").is_ok_and(|m| m.uid() == 0);
    root && (apt(&install) || (apt(&["update"]) && apt(&install)))
}
