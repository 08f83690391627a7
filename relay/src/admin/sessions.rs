//! The live sessions page, and the live rows it shares with the API.

use axum::extract::{Path, Query, State};
use axum::response::Response;
use axum::Extension;

use super::html::{self, esc, t, url, Text};
use super::pages::{csrf_field, op_error, see_other};
use super::{Console, Ctx};
use crate::state::Shared;

/// A live session as the console and API show it.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct LiveRow {
    pub id: String,
    /// The grid node that runs it; `None` on a single node.
    #[serde(default)]
    pub node: Option<String>,
    pub operator: String,
    pub operator_ip: String,
    pub client_host: Option<String>,
    pub client_ip: Option<String>,
    pub since: i64,
    pub state: String,
    pub granted: Option<String>,
    pub bytes_to_client: u64,
    pub bytes_to_operator: u64,
}

/// Every live session of the grid (this node's as they are now, the others' as their
/// nodes last wrote them, at most one heartbeat ago), newest first; on a single node, its
/// own. Another node's list that cannot be read is left out and logged: the console still
/// shows what it can.
pub(crate) async fn grid_rows(shared: &Shared) -> Vec<LiveRow> {
    let mut rows = live_rows(shared);
    let Some(grid) = shared.grid() else { return rows };
    let others: Vec<String> = match grid.nodes().list().await {
        Ok(nodes) => nodes.into_iter().map(|n| n.name).filter(|n| n != grid.name()).collect(),
        Err(e) => {
            tracing::warn!(error = %e, "cannot list the grid's nodes; showing this node's sessions");
            return rows;
        }
    };
    match crate::grid::live::read(grid.redis(), &others).await {
        Ok(docs) => {
            for (node, doc) in docs {
                match serde_json::from_str::<Vec<LiveRow>>(&doc) {
                    Ok(theirs) => rows.extend(theirs.into_iter().map(|r| LiveRow {
                        node: Some(node.clone()),
                        ..r
                    })),
                    Err(e) => tracing::warn!(%node, error = %e, "ignored a node's live list that does not parse"),
                }
            }
        }
        Err(e) => tracing::warn!(error = %e, "cannot read the other nodes' live sessions"),
    }
    rows.sort_by_key(|r| std::cmp::Reverse(r.since));
    rows
}

/// This node's live sessions, newest first.
pub(crate) fn live_rows(shared: &Shared) -> Vec<LiveRow> {
    let node = shared.grid().map(|g| g.name().to_string());
    let mut rows: Vec<LiveRow> = shared
        .sessions()
        .live()
        .into_iter()
        .map(|s| {
            let info = shared.live.get(&s.id).map(|i| i.clone());
            let view = s.view();
            let state = match view.phase {
                crate::policy::Phase::Active if view.modes.chat_only => "chat_only",
                crate::policy::Phase::Active if view.modes.paused => "paused",
                crate::policy::Phase::Active if view.modes.view_only => "view_only",
                crate::policy::Phase::Active => "active",
                crate::policy::Phase::AwaitingConsent => "awaiting_consent",
                _ => "awaiting_client",
            };
            LiveRow {
                id: s.id.clone(),
                node: node.clone(),
                operator: s.operator.clone(),
                operator_ip: info.as_ref().map(|i| i.operator_ip.clone()).unwrap_or_default(),
                client_host: info.as_ref().and_then(|i| i.client_host.clone()),
                client_ip: info.as_ref().and_then(|i| i.client_ip.clone()),
                since: info.as_ref().map(|i| i.issued_at).unwrap_or_default(),
                state: state.to_string(),
                granted: (!view.granted.is_empty())
                    .then(|| view.granted.to_string())
                    .or_else(|| info.and_then(|i| i.granted)),
                bytes_to_client: view.counters.bytes_to_client,
                bytes_to_operator: view.counters.bytes_to_operator,
            }
        })
        .collect();
    rows.sort_by_key(|r| std::cmp::Reverse(r.since));
    rows
}

/// How often the live sessions page reloads itself (a meta refresh: no script under the CSP).
const LIVE_REFRESH_S: u32 = 5;

pub(super) async fn sessions_page(
    State(console): State<Console>,
    Extension(ctx): Extension<Ctx>,
    Query(done): Query<super::operators::Done>,
) -> Response {
    let lang = ctx.lang;
    let grid = console.shared.grid().is_some();
    let rows: String = grid_rows(&console.shared)
        .await
        .iter()
        .map(|r| {
            let state = match r.state.as_str() {
                "active" => t(lang, Text::StateActive),
                "paused" => t(lang, Text::StatePaused),
                "view_only" => t(lang, Text::StateViewOnly),
                "chat_only" => t(lang, Text::StateChatOnly),
                "awaiting_consent" => t(lang, Text::AwaitingConsent),
                _ => t(lang, Text::AwaitingClient),
            };
            let node = match (&r.node, grid) {
                (Some(n), true) => format!("<td class=\"node\">{}</td>", esc(n)),
                _ => String::new(),
            };
            format!(
                "<tr>{node}<td>{}</td><td class=\"client-host\">{}</td><td>{}</td><td class=\"t\">{}</td><td class=\"state\">{}</td><td>{}</td><td class=\"bytes\">{} / {}</td><td><form method=\"post\" action=\"/sessions/{}/end\" class=\"inline\">{}<button class=\"end\">{}</button></form></td></tr>",
                esc(&r.operator),
                esc(r.client_host.as_deref().unwrap_or("")),
                esc(r.client_ip.as_deref().unwrap_or("")),
                html::time(&ctx.zone, Some(r.since)),
                state,
                esc(&super::words::permissions(lang, r.granted.as_deref().unwrap_or(""))),
                html::bytes(r.bytes_to_client),
                html::bytes(r.bytes_to_operator),
                url(&r.id),
                csrf_field(&ctx),
                t(lang, Text::End),
            )
        })
        .collect();
    let mut headers = Vec::new();
    if grid {
        headers.push(t(lang, Text::Node));
    }
    headers.extend([
        t(lang, Text::Operator),
        t(lang, Text::ClientHost),
        t(lang, Text::ClientIp),
        t(lang, Text::Since),
        t(lang, Text::State),
        t(lang, Text::Granted),
        t(lang, Text::BytesEachWay),
        "",
    ]);
    let body = format!(
        "{}<p class=\"small\">{}</p>{}",
        html::notice(lang, done.done.as_deref()),
        t(lang, Text::RefreshesItself),
        html::table("live", &headers, &rows)
    );
    super::pages::render_refreshing(&ctx, t(lang, Text::Sessions), &body, LIVE_REFRESH_S)
}

pub(super) async fn end_session(
    State(console): State<Console>,
    Extension(ctx): Extension<Ctx>,
    Path(id): Path<String>,
) -> Response {
    match console.ops.end_session(&ctx.actor(), &id).await {
        Ok(()) => see_other("/sessions?done=end"),
        Err(e) => op_error(&ctx, &e),
    }
}
