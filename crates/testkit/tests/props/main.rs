//! Property tests (proptest) of the parsers and decoders that read untrusted input: the
//! network config (`NetConf::from_value`), `CNI_ARGS`, CNI results of every version, label
//! selectors, and the datastore's stored values. This is issue 12's fuzz gate: it runs in the
//! normal test command, each property bounded by `PROPTEST_CASES` (default 256), a
//! shrink-time cap and a wall-clock bound ([`PROPERTY_BOUND`]), with failures persisted under
//! `proptest-regressions/`.
//!
//! Properties that cannot hold until another branch's fix merges carry the defect number and
//! run through [`pending`]: in a bounded child process (a stack overflow aborts the whole
//! process), reported but not failed while they fail and the defect is in [`PENDING`]; one
//! that holds fails until the defect leaves the list.
//!
//! Run: `cargo nextest run -p testkit --test props`.

// Test code: a failed unwrap is a failed test.
#![allow(clippy::unwrap_used)]

mod args;
mod datastore;
mod netconf;
mod result;
mod selector;
mod values;

use std::cell::RefCell;
use std::io::Write as _;
use std::sync::mpsc;
use std::time::Duration;

use proptest::test_runner::Config;

/// Defects whose properties run and are reported but do not fail (their fixes are in other
/// branches); the lead empties this list at merge.
/// `selector-utf8` is a defect this suite found (not in the findings): see
/// `selector::any_text_parses_or_is_an_error`.
pub const PENDING: &[&str] = &[];

/// The wall-clock bound of one property (all its cases and its shrinking).
pub const PROPERTY_BOUND: Duration = Duration::from_secs(20);

/// How long the child of a [`pending`] property may run before it is killed: within the
/// parent's own [`PROPERTY_BOUND`].
const PENDING_CHILD_BOUND: Duration = Duration::from_secs(17);

/// The configuration of every property: `PROPTEST_CASES` cases (default 256), shrinking
/// bounded to 5 s, regressions persisted next to the sources. It also starts the property's
/// [`PROPERTY_BOUND`] (see [`watchdog`]).
pub fn config() -> Config {
    watchdog();
    Config {
        max_shrink_time: 5_000,
        ..Config::default()
    }
}

/// Bounds the calling test (libtest runs each on a thread of its own, named after it) to
/// [`PROPERTY_BOUND`] from its first call: past that, the process reports the test and
/// exits with a failure. proptest's own `timeout` would fork a process per case; a failing
/// case made of elapsed time would persist a bogus regression.
fn watchdog() {
    thread_local! {
        // Dropped when the test's thread ends, which disarms the watchdog (its receiver
        // sees the channel close).
        static ARMED: RefCell<Option<mpsc::Sender<()>>> = const { RefCell::new(None) };
    }
    ARMED.with(|armed| {
        let mut armed = armed.borrow_mut();
        if armed.is_some() {
            return;
        }
        let (done, wait) = mpsc::channel::<()>();
        let test = std::thread::current()
            .name()
            .unwrap_or("<unnamed>")
            .to_string();
        std::thread::spawn(move || {
            if let Err(mpsc::RecvTimeoutError::Timeout) = wait.recv_timeout(PROPERTY_BOUND) {
                let _ = writeln!(
                    std::io::stderr(),
                    "property {test} ran over its {PROPERTY_BOUND:?} bound"
                );
                std::process::exit(101);
            }
        });
        *armed = Some(done);
    });
}

/// Runs `body` as the property of defect `defect`. While the defect is pending, the test
/// runs itself again in a child process (so that even an abort is only reported; bounded by
/// [`PENDING_CHILD_BOUND`] and killed if this process dies), prints the outcome, and passes
/// as long as the property fails; once it holds, the test fails until the defect leaves
/// [`PENDING`]. Once it has left, `body` runs here and must hold.
pub fn pending(defect: &str, test: &str, body: impl FnOnce()) {
    // `module_path!()::name` without the crate's name is the test's name.
    let test = test.split_once("::").map_or(test, |(_, rest)| rest);
    watchdog();
    const CHILD: &str = "TESTKIT_PROPS_PENDING_CHILD";
    if !PENDING.contains(&defect) || std::env::var_os(CHILD).is_some() {
        body();
        return;
    }
    let mut cmd = std::process::Command::new(std::env::current_exe().unwrap());
    cmd.args([test, "--exact", "--nocapture", "--test-threads=1"])
        .env(CHILD, "1");
    let (out, killed) = testkit::process::output_within(cmd, PENDING_CHILD_BOUND).unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    // libtest's summary: exactly this one test ran and passed (a wrong name runs none).
    let passed = out.status.success()
        && stdout
            .lines()
            .any(|l| l.starts_with("test result: ok.") && l.contains(" 1 passed;"));
    let verdict = if killed {
        format!("killed after {PENDING_CHILD_BOUND:?}")
    } else if passed {
        "holds".to_string()
    } else {
        "fails".to_string()
    };
    let stderr = String::from_utf8_lossy(&out.stderr);
    let tail: String = stderr
        .lines()
        .rev()
        .take(8)
        .collect::<Vec<_>>()
        .into_iter()
        .rev()
        .collect::<Vec<_>>()
        .join("\n    ");
    let _ = writeln!(
        std::io::stderr(),
        "PENDING {defect} {test}: {verdict} ({})\n    {tail}",
        out.status
    );
    assert!(
        !out.status.success() || passed,
        "the pending child of {test} succeeded without running exactly that one test:\n{stdout}"
    );
    assert!(
        !passed,
        "defect {defect} now holds: drop it from PENDING ({test})"
    );
}
