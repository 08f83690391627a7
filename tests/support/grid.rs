//! A grid of relay nodes for the end-to-end tests: real `tsunagu-relay` processes sharing
//! the real Redis (a key prefix of their own) and PostgreSQL (a schema of their own).

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use tsunagu_relay::testing::TestPostgres;

use super::*;

pub const OP_PASSWORD: &str = "Help-desk-2026";
pub const REDIS_URL: &str = "redis://127.0.0.1:6379";

/// Nodes `a`, `b`, ... of one grid, with the shared files `tsunagu-relay grid init` made.
pub struct Grid {
    pub nodes: Vec<RelayProcess>,
    pub shared: tempfile::TempDir,
    pub prefix: String,
    pub pg: TestPostgres,
}

/// Whether the machine has the Redis the grid needs; CI must (`.ci/run` starts it).
pub fn redis_up() -> bool {
    let up = Command::new("redis-cli")
        .args(["-u", REDIS_URL, "ping"])
        .output()
        .map(|o| o.status.success() && String::from_utf8_lossy(&o.stdout).trim() == "PONG")
        .unwrap_or(false);
    if !up {
        assert!(
            std::env::var_os("CI").is_none() && std::env::var_os("TSUNAGU_REQUIRE_REDIS").is_none(),
            "CI must provide Redis on 127.0.0.1:6379 (.ci/run starts it)"
        );
        eprintln!("no Redis on 127.0.0.1:6379; skipping the grid test");
    }
    up
}

impl Grid {
    /// Starts `n` nodes (one after the other: the first creates the schema) with `extra`
    /// appended to every node's config. `None` when Redis or PostgreSQL is not there.
    pub fn start(what: &str, n: usize, extra: &str) -> Option<Self> {
        if !redis_up() {
            return None;
        }
        let pg = TestPostgres::from_env(what)?;
        let shared = tempfile::tempdir().unwrap();
        let out = Command::new(bin("tsunagu-relay"))
            .args(["grid", "init"])
            .arg(shared.path().join("grid"))
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "grid init: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let prefix = format!("t:{what}:{}:", std::process::id());
        let mut grid = Self {
            nodes: Vec::new(),
            shared,
            prefix,
            pg,
        };
        for i in 0..n {
            let name = ((b'a' + i as u8) as char).to_string();
            let config = format!("{}{extra}", grid.config_of(&name));
            let dir = tempfile::tempdir().unwrap();
            grid.nodes.push(RelayProcess::start_in(dir, &config, 1));
        }
        Some(grid)
    }

    pub fn files(&self) -> PathBuf {
        self.shared.path().join("grid")
    }

    pub fn config_of(&self, node: &str) -> String {
        let g = self.files();
        format!(
            "[database]\nurl = \"{url}\"\nschema = \"{schema}\"\n\
             [tls]\nca_file = \"{g}/ca.pem\"\nca_key_file = \"{g}/ca.key\"\n\
             [secrets]\nkey_file = \"{g}/keys/secrets.key\"\naudit_key_file = \"{g}/keys/audit.key\"\n\
             signing_key_file = \"{g}/keys/audit-signing.key\"\n\
             [cluster]\nnode = \"{node}\"\nredis_url = \"{REDIS_URL}\"\nkey_prefix = \"{prefix}\"\n\
             quic_listen = \"127.0.0.1:0\"\nca_file = \"{g}/cluster-ca.pem\"\nca_key_file = \"{g}/cluster-ca.key\"\n",
            url = self.pg.url,
            schema = self.pg.schema,
            prefix = self.prefix,
            g = g.display(),
        )
    }

    /// The CA every endpoint pins, whichever node it reaches.
    pub fn ca(&self) -> PathBuf {
        self.files().join("ca.pem")
    }

    /// `tsunagu-relay ARGS --config <node i's config>`, `stdin` fed.
    pub fn cli(&self, i: usize, args: &[&str], stdin: Option<&str>) -> std::process::Output {
        cli_with_config(&self.nodes[i].dir.path().join("relay.toml"), args, stdin)
    }

    pub fn operator(&self, i: usize, user: &str) -> App {
        App::operator(&self.nodes[i].spec(), &self.ca(), None, user, OP_PASSWORD)
    }

    pub fn client(&self, i: usize, code: &str) -> App {
        App::client(&self.nodes[i].spec(), &self.ca(), None, code, &["--fps", "10"])
    }
}

impl Drop for Grid {
    fn drop(&mut self) {
        for node in &mut self.nodes {
            node.stop();
        }
        let _ = Command::new("sh")
            .arg("-c")
            .arg(format!(
                "redis-cli -u {REDIS_URL} --scan --pattern '{}*' | xargs -r redis-cli -u {REDIS_URL} del",
                self.prefix
            ))
            .stdout(Stdio::null())
            .status();
        let pg = self.pg.clone();
        let _ = std::thread::spawn(move || {
            tokio::runtime::Runtime::new().unwrap().block_on(pg.drop_schema());
        })
        .join();
    }
}

pub fn cli_with_config(config: &Path, args: &[&str], stdin: Option<&str>) -> std::process::Output {
    relay_cli_with(args, "--config", config, stdin)
}

pub fn add_alice(grid: &Grid, through: usize) {
    let out = grid.cli(through, &["operator", "add", "alice"], Some(OP_PASSWORD));
    assert!(
        out.status.success(),
        "operator add: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}
