//! History exports: the filtered list as CSV, and one day as a zip (sessions, files and
//! the audit trail's signed checkpoints). Every export is audited.

use std::collections::HashMap;

use axum::extract::{Query, State};
use axum::http::header;
use axum::response::{IntoResponse, Response};
use axum::Extension;

use super::history::{day_bounds, HistoryQuery};
use super::html::url;
use super::ops::OpError;
use super::pages::op_error;
use super::{Console, Ctx};
use crate::store::{HistoryFilter, SessionRecord};

fn csv_response(filename: &str, body: String) -> Response {
    (
        [
            (header::CONTENT_TYPE, "text/csv; charset=utf-8".to_string()),
            (
                header::CONTENT_DISPOSITION,
                format!("attachment; filename=\"{filename}\""),
            ),
        ],
        body,
    )
        .into_response()
}

pub(super) async fn history_csv(
    State(console): State<Console>,
    Extension(ctx): Extension<Ctx>,
    Query(q): Query<HistoryQuery>,
) -> Response {
    let records = match q.filter(&ctx.zone, crate::store::HISTORY_MAX_ROWS) {
        Ok(f) => console.shared.store.history(&f).await.map_err(OpError::from),
        Err(e) => Err(e),
    };
    match records.and_then(|r| crate::history::render(&r, "csv").map_err(|_| OpError::Internal)) {
        Ok(csv) => {
            console
                .audit(
                    format!("admin:{}", ctx.admin),
                    "history_exported",
                    "csv",
                    &ctx.ip,
                    q.query_string(),
                )
                .await;
            csv_response("tsunagu-history.csv", csv)
        }
        Err(e) => op_error(&ctx, &e),
    }
}

async fn files_csv(console: &Console, records: &[SessionRecord]) -> Result<String, OpError> {
    let mut out = String::from("session,name,size,direction,bytes,result,at\n");
    for r in records {
        for f in console.shared.store.session_files(&r.id).await? {
            let cells = [
                f.session_id,
                f.name,
                f.size.to_string(),
                f.direction,
                f.bytes.to_string(),
                f.result,
                crate::time::format_utc(f.at),
            ];
            out.push_str(
                &cells
                    .iter()
                    .map(|c| crate::history::csv_field(c))
                    .collect::<Vec<_>>()
                    .join(","),
            );
            out.push('\n');
        }
    }
    Ok(out)
}

pub(super) async fn history_zip(
    State(console): State<Console>,
    Extension(ctx): Extension<Ctx>,
    Query(q): Query<HashMap<String, String>>,
) -> Response {
    let date = q.get("date").cloned().unwrap_or_default();
    // The day the admin typed, in the console's time zone.
    let (start, end) = match day_bounds(&ctx.zone, &date) {
        Ok(s) => s,
        Err(e) => return op_error(&ctx, &e),
    };
    let filter = HistoryFilter {
        from_ms: Some(start),
        to_ms: Some(end),
        limit: Some(crate::store::HISTORY_MAX_ROWS),
        ..Default::default()
    };
    let built = async {
        let records = console.shared.store.history(&filter).await?;
        let sessions = crate::history::render(&records, "csv").map_err(|_| OpError::Internal)?;
        let files = files_csv(&console, &records).await?;
        // Signed heads of the audit trail, so a copy outside the relay can later show rows
        // cut from its end.
        let checkpoints = console.shared.audit.day_checkpoints(start, end).await;
        zip_files(&[
            ("sessions.csv", sessions.as_bytes()),
            ("files.csv", files.as_bytes()),
            ("audit-checkpoints.jsonl", checkpoints.as_bytes()),
        ])
        .map_err(|_| OpError::Internal)
    };
    match built.await {
        Ok(bytes) => {
            console
                .audit(
                    format!("admin:{}", ctx.admin),
                    "history_exported",
                    "zip",
                    &ctx.ip,
                    format!("date={date}"),
                )
                .await;
            (
                [
                    (header::CONTENT_TYPE, "application/zip".to_string()),
                    (
                        header::CONTENT_DISPOSITION,
                        format!("attachment; filename=\"tsunagu-history-{}.zip\"", url(&date)),
                    ),
                ],
                bytes,
            )
                .into_response()
        }
        Err(e) => op_error(&ctx, &e),
    }
}

/// A zip archive of named files (deflated).
pub fn zip_files(files: &[(&str, &[u8])]) -> zip::result::ZipResult<Vec<u8>> {
    use std::io::Write;
    let mut w = zip::ZipWriter::new(std::io::Cursor::new(Vec::new()));
    let opts = zip::write::SimpleFileOptions::default().compression_method(zip::CompressionMethod::Deflated);
    for (name, data) in files {
        w.start_file(*name, opts)?;
        w.write_all(data)?;
    }
    Ok(w.finish()?.into_inner())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn zip() {
        let zip = zip_files(&[("a.csv", b"x,y\n")]).unwrap();
        assert_eq!(&zip[..2], b"PK");
    }
}
