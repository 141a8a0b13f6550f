//! Running a test inside a network namespace it makes: the outer test creates the namespace,
//! runs its own test binary there (`ip netns exec`) for one ignored test, and deletes it.

use std::process::Command;

/// Runs `program` with `args` and returns its output; panics when it fails.
pub fn run(program: &str, args: &[&str]) -> String {
    let out = Command::new(program).args(args).output().unwrap();
    assert!(
        out.status.success(),
        "{program} {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Runs test `inner` of this binary inside a new network namespace named after `prefix`, with
/// environment variable `marker` set to `1` (the inner test refuses to run without it), and
/// asserts that it ran and passed. The namespace is deleted afterwards.
pub fn run_inside(prefix: &str, inner: &str, marker: &str) {
    let ns = format!("{prefix}-{}", std::process::id());
    run("ip", &["netns", "add", &ns]);
    let me = std::env::current_exe().unwrap();
    let out = Command::new("ip")
        .args(["netns", "exec", &ns])
        .arg(&me)
        .args(["--exact", inner, "--include-ignored", "--nocapture"])
        .env(marker, "1")
        .output()
        .unwrap();
    let _ = Command::new("ip").args(["netns", "del", &ns]).status();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "{text}");
    assert!(text.contains("1 passed"), "the inner test ran: {text}");
}

/// Panics unless this process was started by [`run_inside`] with `marker`.
pub fn assert_inside(marker: &str) {
    assert_eq!(
        std::env::var(marker).as_deref(),
        Ok("1"),
        "run inside its namespace only"
    );
}
