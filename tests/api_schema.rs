//! The OpenAPI document against the running relay: schemathesis (installed by `.ci/run`
//! under `target/schemathesis`) runs every check it has, in every phase, against the
//! console's HTTPS listener with a read-write API token, and must report nothing. Each
//! operation gets a few examples only, so the run stays short.

mod support;

use std::path::PathBuf;
use std::process::Command;
use std::time::Duration;

use support::admin::console_relay;

/// Test cases per operation and phase: enough to walk every status and constraint the
/// document states, few enough for CI.
const EXAMPLES: &str = "25";
/// The whole run's deadline (it takes well under a minute).
const RUN_DEADLINE: Duration = Duration::from_secs(600);

/// The schemathesis CLI `.ci/run` installs (pinned there) in a virtualenv under target/.
fn schemathesis() -> Option<PathBuf> {
    let st = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("target/schemathesis/bin/st");
    st.exists().then_some(st)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn schemathesis_finds_nothing_wrong_with_the_api_or_its_document() {
    let Some(st) = schemathesis() else {
        assert!(
            std::env::var_os("CI").is_none(),
            "CI must provide schemathesis in target/schemathesis (.ci/run installs it)"
        );
        eprintln!("skipped: schemathesis is not installed in target/schemathesis (run .ci/run)");
        return;
    };
    let (relay, _secret) = console_relay(|c| {
        // Schemathesis also sends wrong tokens on purpose (is authentication ignored?):
        // they must not lock its own address out of the rest of the run.
        c.admin.lockout_after = 1_000_000;
        c.admin.max_connections_per_source = 1_000;
    })
    .await;
    let shared = relay.relay.shared();
    let ops = tsunagu_relay::admin::ops::Ops::of_relay(shared);
    let actor = tsunagu_relay::admin::ops::Actor {
        name: "test".into(),
        ip: String::new(),
    };
    let token = ops
        .create_token(&actor, "schemathesis", tsunagu_relay::store::TokenScope::Write, None)
        .await
        .unwrap()
        .token;
    let addr = relay.relay.admin_addr().unwrap();
    let report = tempfile::tempdir().unwrap();
    let mut cmd = Command::new(st);
    // Its cache of examples goes into the temporary folder, not the checkout.
    cmd.current_dir(report.path())
        .arg("run")
        .arg(format!("https://127.0.0.1:{}/api/v1/openapi.json", addr.port()))
        .args(["--url", &format!("https://127.0.0.1:{}/api/v1", addr.port())])
        .args(["--checks", "all"])
        .args(["--max-examples", EXAMPLES])
        .args(["--seed", "1"])
        .args(["--workers", "1"])
        .args(["--request-timeout", "10"])
        .arg("--tls-verify")
        .arg(relay.ca())
        .args(["--header", &format!("Authorization: Bearer {token}")])
        .arg("--report-dir")
        .arg(report.path())
        .env("NO_COLOR", "1")
        .stdout(std::fs::File::create(report.path().join("stdout.txt")).unwrap())
        .stderr(std::fs::File::create(report.path().join("stderr.txt")).unwrap());
    let mut child = cmd.spawn().expect("schemathesis starts");
    // The relay runs on this runtime's workers; the wait for schemathesis blocks one
    // thread of its own.
    let status = tokio::task::spawn_blocking(move || {
        let started = std::time::Instant::now();
        loop {
            if let Some(status) = child.try_wait().expect("schemathesis can be waited for") {
                return Some(status);
            }
            if started.elapsed() > RUN_DEADLINE {
                let _ = child.kill();
                let _ = child.wait();
                return None;
            }
            std::thread::sleep(Duration::from_millis(200));
        }
    })
    .await
    .unwrap();
    let stdout = std::fs::read_to_string(report.path().join("stdout.txt")).unwrap_or_default();
    let stderr = std::fs::read_to_string(report.path().join("stderr.txt")).unwrap_or_default();
    let status = status.unwrap_or_else(|| panic!("schemathesis did not finish within {RUN_DEADLINE:?}:\n{stdout}"));
    assert!(status.success(), "schemathesis reported problems:\n{stdout}\n{stderr}");
    assert!(stdout.contains("passed"), "{stdout}");
    relay.relay.shutdown().await;
}
