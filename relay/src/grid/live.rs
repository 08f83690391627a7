//! The grid's live view: every node writes what its console would list about its own live
//! sessions to Redis on each heartbeat (one JSON document per node, expiring with the
//! node's membership), and a console on any node reads every node's document to list the
//! whole grid's sessions with the node each runs on. The document is the console's own
//! row type, opaque here; it holds no code, no content, only what the console shows.

use super::kv::{GridError, Redis};

/// The key of `node`'s document.
fn key(redis: &Redis, node: &str) -> String {
    redis.key(&format!("live:{node}"))
}

/// Writes this node's live sessions (a JSON array) for `ttl`: a node that stops writing
/// disappears from every console when it is gone from the grid.
pub async fn publish(redis: &Redis, node: &str, rows_json: String, ttl: std::time::Duration) -> Result<(), GridError> {
    let ttl_ms = ttl.as_millis().max(1) as u64;
    let _: () = redis
        .run(
            "publishing live sessions",
            redis::cmd("SET")
                .arg(key(redis, node))
                .arg(rows_json)
                .arg("PX")
                .arg(ttl_ms),
        )
        .await?;
    Ok(())
}

/// Each of `nodes`' documents, as written (JSON arrays), with the node's name; a node
/// without a document (it just joined, or it is gone) is left out.
pub async fn read(redis: &Redis, nodes: &[String]) -> Result<Vec<(String, String)>, GridError> {
    if nodes.is_empty() {
        return Ok(Vec::new());
    }
    let mut cmd = redis::cmd("MGET");
    for node in nodes {
        cmd.arg(key(redis, node));
    }
    let docs: Vec<Option<String>> = redis.run("reading live sessions", &cmd).await?;
    Ok(nodes
        .iter()
        .cloned()
        .zip(docs)
        .filter_map(|(node, doc)| doc.map(|d| (node, d)))
        .collect())
}

/// The node whose live document lists session `id`, if any (a console ending a session it
/// does not run). Scans the grid's documents: one per node, so a handful of keys.
pub async fn node_of(redis: &Redis, id: &str) -> Result<Option<String>, GridError> {
    let pattern = format!("{}*", key(redis, ""));
    let mut cursor: u64 = 0;
    loop {
        let (next, keys): (u64, Vec<String>) = redis
            .run(
                "finding a live session",
                redis::cmd("SCAN")
                    .arg(cursor)
                    .arg("MATCH")
                    .arg(&pattern)
                    .arg("COUNT")
                    .arg(100),
            )
            .await?;
        for k in keys {
            let doc: Option<String> = redis.run("reading live sessions", redis::cmd("GET").arg(&k)).await?;
            let Some(doc) = doc else { continue };
            let rows: Vec<serde_json::Value> = serde_json::from_str(&doc).unwrap_or_default();
            if rows.iter().any(|r| r["id"] == id) {
                return Ok(Some(k[pattern.len() - 1..].to_string()));
            }
        }
        if next == 0 {
            return Ok(None);
        }
        cursor = next;
    }
}
