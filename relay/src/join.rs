//! The public download page on the relay ports: `GET /join` tells a customer, in English or
//! Japanese, how to join a support session, and `GET /join/tsunagu-client` hands out the
//! client program with this relay's address and trust anchor appended (the join bundle,
//! [`tsunagu_proto::bundle`]), so the customer runs it, types the code and presses Connect.
//!
//! A browser reaches it on any relay port: the relay's TLS offers `http/1.1` next to the
//! endpoints' protocol, and a connection that picks it is served here, under the same
//! connection caps as every other, with a deadline on the whole connection.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;

use axum::body::Body;
use axum::extract::{Query, Request, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Router;
use bytes::Bytes;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite};
use tsunagu_proto::bundle::JoinConfig;

use crate::admin::html::{esc, Lang};
use crate::config::Config;
use crate::state::Shared;

/// The ALPN name a browser's TLS offers; the relay serves the download page on it.
pub const HTTP_ALPN: &[u8] = b"http/1.1";

/// The file name the browser saves the client under.
pub const CLIENT_FILE_NAME: &str = "tsunagu-client";

/// Read size when streaming the client program: large enough that a download is a few
/// hundred reads, small enough that sixteen downloads hold a few MiB.
const CHUNK: usize = 256 * 1024;

/// Where the client program to hand out is: `join.client_file`, else `tsunagu-client`
/// beside the relay's own program. `None` when there is none.
pub fn client_program(config: &Config) -> Option<PathBuf> {
    let path = match &config.join.client_file {
        Some(p) => p.clone(),
        None => std::env::current_exe().ok()?.parent()?.join(CLIENT_FILE_NAME),
    };
    path.is_file().then_some(path)
}

/// The CA certificate (PEM) a bundle carries: `join.ca_file`, else the relay's own CA when
/// its certificate is self-generated; none when the certificate comes from ACME or a chain
/// the relay's operator supplied (publicly trusted, or `join.ca_file` says what to trust).
fn bundle_ca(config: &Config) -> std::io::Result<Option<String>> {
    let path = match &config.join.ca_file {
        Some(p) => p.clone(),
        None if config.tls.acme.is_some() || config.tls.cert_file.is_some() => return Ok(None),
        None => crate::tls::ca_path(config),
    };
    std::fs::read_to_string(path).map(Some)
}

/// Serves one browser connection that chose `http/1.1` on a relay port, until it closes or
/// `join.connection_timeout` has passed.
pub async fn serve<S>(shared: Arc<Shared>, io: S, peer: SocketAddr)
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let app = router(shared.clone());
    let service = hyper::service::service_fn(move |req: hyper::Request<hyper::body::Incoming>| {
        let app = app.clone();
        async move { tower::ServiceExt::oneshot(app, req.map(Body::new)).await }
    });
    let conn = hyper::server::conn::http1::Builder::new()
        .timer(hyper_util::rt::TokioTimer::new())
        .header_read_timeout(shared.config.timeouts.handshake)
        .serve_connection(hyper_util::rt::TokioIo::new(io), service);
    if tokio::time::timeout(shared.config.join.connection_timeout, conn)
        .await
        .is_err()
    {
        tracing::debug!(%peer, "download page connection reached its deadline");
    }
}

fn router(shared: Arc<Shared>) -> Router {
    Router::new()
        .route("/join", get(page))
        .route("/join/", get(page))
        .route(&format!("/join/{CLIENT_FILE_NAME}"), get(download))
        .fallback(|| async { (StatusCode::NOT_FOUND, "not found\n") })
        .layer(middleware::from_fn(headers))
        .with_state(shared)
}

async fn headers(req: Request, next: Next) -> Response {
    let mut res = next.run(req).await;
    let h = res.headers_mut();
    h.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(
            "default-src 'none'; style-src 'unsafe-inline'; frame-ancestors 'none'; base-uri 'none'",
        ),
    );
    h.insert(header::X_CONTENT_TYPE_OPTIONS, HeaderValue::from_static("nosniff"));
    h.insert(header::REFERRER_POLICY, HeaderValue::from_static("no-referrer"));
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    res
}

#[derive(serde::Deserialize)]
struct LangQuery {
    lang: Option<String>,
}

fn lang_of(query: &LangQuery, headers: &HeaderMap) -> Lang {
    let accept = headers.get(header::ACCEPT_LANGUAGE).and_then(|v| v.to_str().ok());
    Lang::pick(query.lang.as_deref(), accept)
}

/// The words of the page, English and Japanese.
struct Words {
    title: &'static str,
    intro: &'static str,
    step_download: &'static str,
    download: &'static str,
    step_run: &'static str,
    step_run_detail: &'static str,
    step_code: &'static str,
    unavailable: &'static str,
    other_lang: &'static str,
    system: &'static str,
}

fn words(lang: Lang) -> Words {
    match lang {
        Lang::En => Words {
            title: "Join a remote support session",
            intro: "Your support contact will give you an 8-digit code. You choose what they may do, and you can stop the session at any time.",
            step_download: "Download the client program.",
            download: "Download tsunagu-client",
            step_run: "Run it.",
            step_run_detail: "In a terminal, in the folder you saved it to:",
            step_code: "Type the code your support contact gives you and press Connect.",
            unavailable: "The client program is not available on this relay. Ask your support contact for it.",
            other_lang: "日本語",
            system: "For Linux (x86-64) with an X11 desktop.",
        },
        Lang::Ja => Words {
            title: "リモートサポートに参加する",
            intro: "サポート担当者から 8 桁のコードが伝えられます。担当者に許可する操作はあなたが選べ、いつでもセッションを終了できます。",
            step_download: "クライアントプログラムをダウンロードします。",
            download: "tsunagu-client をダウンロード",
            step_run: "実行します。",
            step_run_detail: "端末で、保存したフォルダーで次を実行してください:",
            step_code: "サポート担当者から伝えられたコードを入力し、「接続」を押します。",
            unavailable: "このリレーではクライアントプログラムを配布していません。サポート担当者にお問い合わせください。",
            other_lang: "English",
            system: "Linux (x86-64、X11 デスクトップ) 用です。",
        },
    }
}

async fn page(State(shared): State<Arc<Shared>>, Query(q): Query<LangQuery>, headers: HeaderMap) -> Response {
    let lang = lang_of(&q, &headers);
    let w = words(lang);
    let other = match lang {
        Lang::En => "ja",
        Lang::Ja => "en",
    };
    let available = client_program(&shared.config).is_some();
    let steps = if available {
        format!(
            "<ol><li>{}<p><a class=\"button\" id=\"download\" href=\"/join/{CLIENT_FILE_NAME}\" download>{}</a></p><p class=\"small\">{}</p></li>\
             <li>{}<p>{}</p><pre>chmod +x {CLIENT_FILE_NAME}\n./{CLIENT_FILE_NAME}</pre></li>\
             <li>{}</li></ol>",
            esc(w.step_download),
            esc(w.download),
            esc(w.system),
            esc(w.step_run),
            esc(w.step_run_detail),
            esc(w.step_code),
        )
    } else {
        format!("<p id=\"unavailable\">{}</p>", esc(w.unavailable))
    };
    let html = format!(
        "<!doctype html><html lang=\"{code}\"><head><meta charset=\"utf-8\">\
         <meta name=\"viewport\" content=\"width=device-width, initial-scale=1\"><title>{title}</title>\
         <style>{STYLE}</style></head><body><main><p class=\"lang\"><a href=\"/join?lang={other}\">{other_lang}</a></p>\
         <h1>{title}</h1><p>{intro}</p>{steps}</main></body></html>",
        code = lang.code(),
        title = esc(w.title),
        other_lang = esc(w.other_lang),
        intro = esc(w.intro),
    );
    ([(header::CONTENT_TYPE, "text/html; charset=utf-8")], html).into_response()
}

/// Inline style: the page has no other files to fetch.
const STYLE: &str = "body{font-family:system-ui,sans-serif;margin:0;background:#f4f6f8;color:#222}\
main{max-width:40em;margin:3em auto;background:#fff;padding:2em 2.5em;border-radius:8px;box-shadow:0 1px 4px #0002}\
h1{font-size:1.6em;margin-top:0}li{margin:1em 0;font-size:1.1em}.small{font-size:.85em;color:#555}\
.button{display:inline-block;background:#1565c0;color:#fff;padding:.7em 1.4em;border-radius:6px;text-decoration:none;font-weight:600}\
pre{background:#263238;color:#eceff1;padding:.8em 1em;border-radius:4px}.lang{text-align:right;margin:0}";

/// The address the bundle dials: `join.relay`, else the host (and port) the browser used:
/// the name the customer's network reaches this relay by.
fn bundle_config(shared: &Shared, headers: &HeaderMap) -> Result<JoinConfig, &'static str> {
    let join = &shared.config.join;
    let relay = match &join.relay {
        Some(r) => r.clone(),
        None => headers
            .get(header::HOST)
            .and_then(|h| h.to_str().ok())
            .ok_or("the request names no host")?
            .to_string(),
    };
    // Empty: the port in the address, else the client's defaults (7615, 80, 443).
    let ports = join.ports.clone();
    let ca_pem = bundle_ca(&shared.config).map_err(|_| "the relay's CA certificate cannot be read")?;
    let config = JoinConfig { relay, ports, ca_pem };
    config.validate()?;
    Ok(config)
}

async fn download(State(shared): State<Arc<Shared>>, headers: HeaderMap) -> Response {
    let unavailable = |why: &str| (StatusCode::SERVICE_UNAVAILABLE, format!("{why}\n")).into_response();
    let Some(path) = client_program(&shared.config) else {
        return unavailable("the client program is not available on this relay");
    };
    let config = match bundle_config(&shared, &headers) {
        Ok(c) => c,
        Err(why) => return (StatusCode::BAD_REQUEST, format!("{why}\n")).into_response(),
    };
    // The slot is taken before the file is opened, and held until the body is sent.
    let Ok(permit) = shared.join_downloads.clone().try_acquire_owned() else {
        return unavailable("too many downloads at once; try again in a minute");
    };
    let file = match tokio::fs::File::open(&path).await {
        Ok(f) => f,
        Err(e) => {
            tracing::warn!(path = %path.display(), error = %e, "cannot open the client program");
            return unavailable("the client program is not available on this relay");
        }
    };
    let len = match file.metadata().await {
        Ok(m) => m.len(),
        Err(_) => return unavailable("the client program is not available on this relay"),
    };
    let trailer = Bytes::from(config.trailer());
    let total = len + trailer.len() as u64;
    let body = futures_util::stream::unfold(
        (Some(file), Some(trailer), permit),
        |(file, trailer, permit)| async move {
            if let Some(mut f) = file {
                let mut buf = vec![0u8; CHUNK];
                match f.read(&mut buf).await {
                    Ok(0) => {}
                    Ok(n) => {
                        buf.truncate(n);
                        return Some((Ok(Bytes::from(buf)), (Some(f), trailer, permit)));
                    }
                    Err(e) => return Some((Err(e), (None, None, permit))),
                }
            }
            let t = trailer?;
            Some((Ok::<_, std::io::Error>(t), (None, None, permit)))
        },
    );
    tracing::info!(relay = %config.relay, "handing out the client program");
    Response::builder()
        .header(header::CONTENT_TYPE, "application/octet-stream")
        .header(
            header::CONTENT_DISPOSITION,
            format!("attachment; filename=\"{CLIENT_FILE_NAME}\""),
        )
        .header(header::CONTENT_LENGTH, total)
        .body(Body::from_stream(body))
        .unwrap_or_else(|_| unavailable("the download could not start"))
}
