//! `tsunagu-relay grid init DIR`, run as an admin runs it.

use std::process::Command;

fn grid_init(dir: &std::path::Path) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_tsunagu-relay"))
        .args(["grid", "init"])
        .arg(dir)
        .output()
        .unwrap()
}

#[test]
fn grid_init_prints_the_paths_and_refuses_to_run_twice() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("grid");
    let out = grid_init(&dir);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let stdout = String::from_utf8(out.stdout).unwrap();
    assert_eq!(stdout.lines().count(), 1, "one JSON line: {stdout}");
    let line: serde_json::Value = serde_json::from_str(stdout.trim()).unwrap();
    assert_eq!(line["event"], "grid_initialized");
    for (field, name) in [
        ("ca", "ca.pem"),
        ("ca_key", "ca.key"),
        ("cluster_ca", "cluster-ca.pem"),
        ("cluster_ca_key", "cluster-ca.key"),
        ("secrets_key", "keys/secrets.key"),
        ("audit_key", "keys/audit.key"),
        ("audit_signing_key", "keys/audit-signing.key"),
    ] {
        let path = std::path::PathBuf::from(line[field].as_str().unwrap());
        assert_eq!(path, dir.join(name), "{field}");
        assert!(path.is_file(), "{field}");
    }
    let stderr = String::from_utf8(out.stderr).unwrap();
    for section in ["[tls]", "[secrets]", "[cluster]", "cluster-ca.pem"] {
        assert!(stderr.contains(section), "the example shows {section}: {stderr}");
    }

    let ca = std::fs::read(dir.join("cluster-ca.pem")).unwrap();
    let again = grid_init(&dir);
    assert!(!again.status.success());
    assert!(
        String::from_utf8_lossy(&again.stderr).contains("already exists"),
        "{}",
        String::from_utf8_lossy(&again.stderr)
    );
    assert_eq!(
        std::fs::read(dir.join("cluster-ca.pem")).unwrap(),
        ca,
        "nothing overwritten"
    );
}
