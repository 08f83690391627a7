//! Hints between the nodes of a grid, over Redis pub/sub: "end this session" (an admin
//! ended it on another node's console), "this operator's account changed" (suspended,
//! deleted, permissions or IP rules changed) and "forget your copy of this operator's
//! account" (session cap, suspension lifted, renamed). A hint only says what to look at: the node
//! that receives one re-reads the account from the shared database, or ends its own
//! session, so a lost or forged-by-a-bug hint changes nothing that is not true. Hints are
//! fast (well under a second); the relay's periodic account poll (`database.account_poll`)
//! still catches anything a hint missed while Redis was away.
//!
//! Publishing uses the grid's shared [`Redis`] handle; listening needs a connection of its
//! own (a subscribed connection can do nothing else), which [`listen`] keeps open and
//! re-opens after Redis comes back.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use futures_util::StreamExt;

use super::kv::{GridError, Redis};
use crate::config::ClusterConfig;
use crate::shutdown::Shutdown;

/// The largest hint payload accepted; real ones are a name or a session id (a few dozen
/// bytes). Anything bigger is not ours.
const MAX_HINT: usize = 4096;
/// How long a listener waits before subscribing again after Redis went away.
const RESUBSCRIBE_AFTER: Duration = Duration::from_millis(500);

/// What one node tells the others.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(tag = "hint", rename_all = "snake_case")]
pub enum Hint {
    /// End this session (wherever it runs) as `admin_ended`.
    EndSession { session_id: String },
    /// Re-read this operator's account and apply it to their live sessions.
    AccountChanged { operator: String },
    /// This operator's account changed in a way live sessions need not hear of (session
    /// cap, suspension lifted, name): forget the copy kept for code issue.
    ForgetOperator { operator: String },
    /// This node is gone (a node took one of its sessions over): close the links to it.
    NodeGone { node: String },
}

/// What a listener does with each hint.
pub type OnHint = Arc<dyn Fn(Hint) -> Pin<Box<dyn Future<Output = ()> + Send>> + Send + Sync>;

/// The channel every node of the grid listens on.
fn channel(prefix: &str) -> String {
    format!("{prefix}hints")
}

/// Tells every node (this one included) about `hint`.
pub async fn publish(redis: &Redis, hint: &Hint) -> Result<(), GridError> {
    let payload =
        serde_json::to_string(hint).map_err(|e| GridError::Unavailable(format!("encoding a hint failed: {e}")))?;
    let _receivers: i64 = redis
        .run(
            "publishing a hint",
            redis::cmd("PUBLISH").arg(channel(redis.prefix())).arg(payload),
        )
        .await?;
    Ok(())
}

/// Listens for hints until `stop`, calling `on_hint` for each (one at a time, in order).
/// Re-subscribes on its own after Redis went away.
pub fn listen(cluster: &ClusterConfig, on_hint: OnHint, mut stop: Shutdown) -> tokio::task::JoinHandle<()> {
    let url = cluster.redis_url.clone();
    let chan = channel(&cluster.key_prefix);
    let timeout = cluster.redis_timeout;
    tokio::spawn(async move {
        loop {
            let subscribed = async {
                let client =
                    redis::Client::open(url.as_str()).map_err(|_| "cluster.redis_url is not valid".to_string())?;
                let mut pubsub = tokio::time::timeout(timeout, client.get_async_pubsub())
                    .await
                    .map_err(|_| "timed out connecting".to_string())?
                    .map_err(|e| format!("{:?}", e.kind()))?;
                tokio::time::timeout(timeout, pubsub.subscribe(&chan))
                    .await
                    .map_err(|_| "timed out subscribing".to_string())?
                    .map_err(|e| format!("{:?}", e.kind()))?;
                Ok::<_, String>(pubsub.into_on_message())
            };
            let mut messages = tokio::select! {
                s = subscribed => match s {
                    Ok(messages) => messages,
                    Err(why) => {
                        tracing::warn!(error = %why, "cannot listen for grid hints; trying again");
                        tokio::select! {
                            _ = tokio::time::sleep(RESUBSCRIBE_AFTER) => continue,
                            _ = stop.recv() => return,
                        }
                    }
                },
                _ = stop.recv() => return,
            };
            tracing::debug!("listening for grid hints");
            loop {
                let message = tokio::select! {
                    m = messages.next() => m,
                    _ = stop.recv() => return,
                };
                let Some(message) = message else {
                    tracing::warn!("lost the grid hints subscription; subscribing again");
                    break;
                };
                let payload: Vec<u8> = match message.get_payload() {
                    Ok(p) => p,
                    Err(_) => continue,
                };
                if payload.len() > MAX_HINT {
                    tracing::warn!(bytes = payload.len(), "ignored an oversized grid hint");
                    continue;
                }
                match serde_json::from_slice::<Hint>(&payload) {
                    Ok(hint) => on_hint(hint).await,
                    Err(e) => tracing::warn!(error = %e, "ignored a grid hint that does not parse"),
                }
            }
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hints_read_as_json_with_their_kind() {
        let h = Hint::AccountChanged {
            operator: "alice".into(),
        };
        let text = serde_json::to_string(&h).unwrap();
        assert_eq!(text, r#"{"hint":"account_changed","operator":"alice"}"#);
        assert_eq!(serde_json::from_str::<Hint>(&text).unwrap(), h);
        assert!(serde_json::from_str::<Hint>(r#"{"hint":"format_disk"}"#).is_err());
    }
}
