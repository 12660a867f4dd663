//! Tests that need root (network namespaces) or a peer program (haproxy,
//! nginx, ...) skip with a printed reason on a developer's machine, and fail
//! instead when CI asks for them: `TANDEM_REQUIRE_ROOT_TESTS=1` and
//! `TANDEM_REQUIRE_PEERS=1` (both set by `.ci/run`).

use std::path::PathBuf;
use std::process::{Command, Stdio};

fn required(var: &str) -> bool {
    std::env::var(var).is_ok_and(|v| v == "1" || v.eq_ignore_ascii_case("true"))
}

/// Prints why `test` skips, or panics if `var` says it must not skip.
fn skip(test: &str, var: &str, reason: &str) -> bool {
    if required(var) {
        panic!("{test}: cannot run: {reason} ({var}=1 forbids skipping)");
    }
    eprintln!("SKIPPED {test}: {reason} (set {var}=1 to make this a failure)");
    false
}

/// Whether network-namespace tests can run here: root, and `ip netns` works.
/// Returns false (after printing why) if not; panics if
/// `TANDEM_REQUIRE_ROOT_TESTS=1`.
pub fn netns_available(test: &str) -> bool {
    const VAR: &str = "TANDEM_REQUIRE_ROOT_TESTS";
    if !nix::unistd::geteuid().is_root() {
        return skip(test, VAR, "needs root for network namespaces");
    }
    match Command::new("ip")
        .args(["netns", "list"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
    {
        Ok(s) if s.success() => true,
        Ok(s) => skip(test, VAR, &format!("`ip netns list` failed ({s})")),
        Err(e) => skip(
            test,
            VAR,
            &format!("`ip` (iproute2) not runnable: {e}; apt-get install iproute2"),
        ),
    }
}

/// Finds a peer program on the PATH (and in /usr/sbin, /usr/bin, where
/// Debian puts haproxy and nginx). Returns None (after printing why) if it
/// is missing; panics if `TANDEM_REQUIRE_PEERS=1`.
pub fn peer(test: &str, program: &str, package: &str) -> Option<PathBuf> {
    if let Some(p) = which(program) {
        return Some(p);
    }
    skip(
        test,
        "TANDEM_REQUIRE_PEERS",
        &format!("{program} not found (apt-get install {package})"),
    );
    None
}

/// The first executable `program` on the PATH or in the sbin/bin dirs.
pub fn which(program: &str) -> Option<PathBuf> {
    if program.contains('/') {
        let p = PathBuf::from(program);
        return is_executable(&p).then_some(p);
    }
    let path = std::env::var("PATH").unwrap_or_default();
    path.split(':')
        .filter(|d| !d.is_empty())
        .map(PathBuf::from)
        .chain(
            [
                "/usr/local/sbin",
                "/usr/local/bin",
                "/usr/sbin",
                "/usr/bin",
                "/sbin",
                "/bin",
            ]
            .map(PathBuf::from),
        )
        .map(|d| d.join(program))
        .find(|p| is_executable(p))
}

fn is_executable(p: &std::path::Path) -> bool {
    use std::os::unix::fs::PermissionsExt;
    std::fs::metadata(p).is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
}
