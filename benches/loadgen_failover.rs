//! The `failover` scenario: live sessions outlive the node that runs them. Three grid
//! nodes; sessions whose operator is on node a, half with the client on a too, half with
//! the client on b (bridged); node a is killed with `kill -9`; every endpoint resumes on
//! another node with its token, and the figures say how many sessions came back, how
//! long it took, whether a consent was asked again, and whether chat crossed the move
//! once and in order.
//!
//! With `--event drain` node a is drained instead (SIGTERM: it asks its endpoints to move
//! and exits); with `--event rolling` nodes a, b and c are drained and started again one
//! after the other, as an upgrade of the whole grid would. In both, every client streams
//! small screen frames ten times a second and the figure is the widest gap between two
//! frames at its operator, across the moves.

use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context, Result};
use ring::signature::{Ed25519KeyPair, KeyPair};
use tsunagu_endpoint::dial::DialConfig;
use tsunagu_proto::pb::{self, frame::Body};
use tsunagu_proto::PermissionSet;

use super::{frame, latency_fields, GridUnderTest, Peer, WAIT};

/// What happens to the grid under the live sessions.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum GridEvent {
    /// Node a is killed with `kill -9`.
    Kill,
    /// Node a is drained (SIGTERM) and exits.
    Drain,
    /// Nodes a, b, c are drained and started again, one after the other.
    Rolling,
}

/// One side of a session as the scenario holds it: its resume key and latest token.
struct Side {
    key: Ed25519KeyPair,
    session_id: String,
    token: Vec<u8>,
    operator: bool,
}

impl Side {
    fn new(operator: bool) -> Result<Self> {
        let rng = ring::rand::SystemRandom::new();
        let pkcs8 = Ed25519KeyPair::generate_pkcs8(&rng).map_err(|_| anyhow!("no key"))?;
        Ok(Self {
            key: Ed25519KeyPair::from_pkcs8(pkcs8.as_ref()).map_err(|_| anyhow!("bad key"))?,
            session_id: String::new(),
            token: Vec::new(),
            operator,
        })
    }

    fn public(&self) -> bytes::Bytes {
        self.key.public_key().as_ref().to_vec().into()
    }

    fn keep(&mut self, t: pb::ResumeToken) {
        self.session_id = t.session_id;
        self.token = t.token.to_vec();
    }

    /// Reads up to this side's next `ResumeToken`, skipping what comes before it.
    async fn take_token(&mut self, peer: &mut Peer) -> Result<()> {
        loop {
            if let Body::ResumeToken(t) = peer.next().await? {
                self.keep(t);
                return Ok(());
            }
        }
    }

    /// Resumes through `cfg`, trying again while the grid answers "unavailable" (the
    /// session's node is not known to be gone yet). Returns the new connection and whether
    /// a consent request came with the resume.
    async fn resume(&mut self, cfg: &DialConfig) -> Result<(Peer, bool)> {
        let deadline = Instant::now() + WAIT;
        loop {
            let mut peer = Peer::connect(cfg).await?;
            let message = tsunagu_proto::resume::signed_message(&self.session_id, self.operator, &self.token);
            peer.writer
                .send(&frame(Body::Resume(pb::Resume {
                    session_id: self.session_id.clone(),
                    operator: self.operator,
                    token: self.token.clone().into(),
                    signature: self.key.sign(&message).as_ref().to_vec().into(),
                })))
                .await?;
            match peer.next().await {
                Ok(Body::Resumed(_)) => {
                    let mut consent_again = false;
                    loop {
                        match peer.next().await? {
                            Body::ResumeToken(t) => {
                                self.keep(t);
                                return Ok((peer, consent_again));
                            }
                            Body::ConsentRequest(_) => consent_again = true,
                            _ => {}
                        }
                    }
                }
                Err(e) if e.to_string().contains("try again") && Instant::now() < deadline => {
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
                Ok(other) => bail!("resume answered with {other:?}"),
                Err(e) => return Err(e),
            }
        }
    }
}

/// A live session with both sides able to resume.
struct Live {
    op: Peer,
    client: Peer,
    op_side: Side,
    client_side: Side,
}

async fn open(op_cfg: &DialConfig, client_cfg: &DialConfig) -> Result<Live> {
    let perms = PermissionSet::ALL;
    let mut op_side = Side::new(true)?;
    let mut client_side = Side::new(false)?;
    let mut op = Peer::login(op_cfg).await?;
    op.writer
        .send(&frame(Body::RequestCode(pb::RequestCode {
            permissions: perms.to_wire(),
            resume_key: op_side.public(),
        })))
        .await?;
    let code = loop {
        if let Body::CodeIssued(c) = op.next().await? {
            break c.code;
        }
    };
    op_side.take_token(&mut op).await?;
    let mut client = Peer::connect(client_cfg).await?;
    client
        .writer
        .send(&frame(Body::Join(pb::Join {
            code,
            host_name: "load".into(),
            resume_key: client_side.public(),
        })))
        .await?;
    client_side.take_token(&mut client).await?;
    client
        .writer
        .send(&frame(Body::Consent(pb::Consent {
            granted: perms.to_wire(),
            denied: false,
        })))
        .await?;
    loop {
        if let Body::SessionState(_) = op.next().await? {
            break;
        }
    }
    Ok(Live {
        op,
        client,
        op_side,
        client_side,
    })
}

/// Waits until `peer`'s connection is gone (the node died or closed it).
async fn until_lost(peer: &mut Peer) {
    let limit = tokio::time::sleep(WAIT);
    tokio::pin!(limit);
    loop {
        tokio::select! {
            r = peer.next() => if r.is_err() { return },
            _ = &mut limit => return,
        }
    }
}

fn chat(id: u64, text: &str) -> Body {
    use prost::Message;
    let payload = pb::ChatMessage {
        text: text.into(),
        id,
        ack: 0,
    }
    .encode_to_vec();
    Body::Data(pb::Data {
        channel: pb::Channel::Chat as i32,
        seq: id,
        payload: payload.into(),
        stream: 0,
    })
}

/// What one session showed across the kill.
struct Outcome {
    resumed_after: Duration,
    first_frame_after: Duration,
    consent_again: bool,
    chat_in_order: bool,
}

/// Both sides of `live` notice the loss, resume (the operator on `op_to`, the client on
/// `client_to`), then the client sends three numbered chat messages and the operator
/// checks they arrive once and in order.
async fn come_back(mut live: Live, killed: Instant, op_to: &DialConfig, client_to: &DialConfig) -> Result<Outcome> {
    let op_lost = until_lost(&mut live.op);
    let client_lost = until_lost(&mut live.client);
    tokio::join!(op_lost, client_lost);
    let (op, client) = tokio::join!(live.op_side.resume(op_to), live.client_side.resume(client_to));
    let (mut op, op_consent) = op.context("the operator's resume")?;
    let (mut client, client_consent) = client.context("the client's resume")?;
    let resumed_after = killed.elapsed();
    for i in 1..=3 {
        client.writer.send(&frame(chat(i, &format!("m{i}")))).await?;
    }
    let mut seen = Vec::new();
    let mut first = None;
    let mut other = Vec::new();
    while seen.len() < 3 {
        match op.next().await {
            Ok(Body::Data(d)) if d.channel == pb::Channel::Chat as i32 => {
                use prost::Message;
                first.get_or_insert_with(|| killed.elapsed());
                seen.push(pb::ChatMessage::decode(d.payload)?.id);
            }
            Ok(body) => other.push(format!("{body:?}")),
            Err(e) => bail!("the operator reading the chat after the resume (after {other:?}): {e}"),
        }
    }
    Ok(Outcome {
        resumed_after,
        first_frame_after: first.unwrap_or_default(),
        consent_again: op_consent || client_consent,
        chat_in_order: seen == [1, 2, 3],
    })
}

/// The scenario (see the module documentation); prints one JSON line.
pub async fn failover(grid: &mut GridUnderTest, sessions: usize) -> Result<()> {
    anyhow::ensure!(sessions >= 2, "--sessions must be at least 2");
    let cfg: Vec<DialConfig> = grid.nodes.iter().map(|n| n.dial_config()).collect::<Result<_>>()?;
    let mut live = Vec::with_capacity(sessions);
    for i in 0..sessions {
        // Half with both sides on node a, half with the client bridged in through node b.
        let client_cfg = if i % 2 == 0 { &cfg[0] } else { &cfg[1] };
        live.push(open(&cfg[0], client_cfg).await?);
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    let killed = Instant::now();
    grid.nodes[0].kill()?;
    let mut tasks = Vec::with_capacity(sessions);
    for (i, l) in live.into_iter().enumerate() {
        // The operators come back on node b, the clients on b or c.
        let (op_to, client_to) = (cfg[1].clone(), cfg[1 + i % 2].clone());
        tasks.push(tokio::spawn(
            async move { come_back(l, killed, &op_to, &client_to).await },
        ));
    }
    let (mut resumed, mut first, mut consents, mut disordered, mut failed) = (Vec::new(), Vec::new(), 0, 0, 0);
    let (mut same_node, mut split) = (Vec::new(), Vec::new());
    let mut first_error = None;
    for (i, t) in tasks.into_iter().enumerate() {
        match t.await? {
            Ok(o) => {
                resumed.push(o.resumed_after);
                first.push(o.first_frame_after);
                if i % 2 == 0 { &mut same_node } else { &mut split }.push(o.first_frame_after);
                consents += usize::from(o.consent_again);
                disordered += usize::from(!o.chat_in_order);
            }
            Err(e) => {
                failed += 1;
                first_error.get_or_insert(format!("{e:#}"));
            }
        }
    }
    let (r50, r99, rmax) = latency_fields(&mut resumed);
    let (f50, f99, fmax) = latency_fields(&mut first);
    let (s50, s99, _) = latency_fields(&mut same_node);
    let (b50, b99, _) = latency_fields(&mut split);
    println!(
        "{}",
        serde_json::json!({
            "scenario": "failover", "event": "kill_9", "sessions": sessions,
            "resumed": resumed.len(), "resumed_percent": (resumed.len() * 1000 / sessions) as f64 / 10.0,
            "failed": failed, "new_consents": consents, "chat_duplicated_or_reordered": disordered,
            "kill_to_resumed_p50_us": r50, "kill_to_resumed_p99_us": r99, "kill_to_resumed_max_us": rmax,
            "kill_to_first_frame_p50_us": f50, "kill_to_first_frame_p99_us": f99, "kill_to_first_frame_max_us": fmax,
            "same_node_first_frame_p50_us": s50, "same_node_first_frame_p99_us": s99,
            "split_first_frame_p50_us": b50, "split_first_frame_p99_us": b99,
        })
    );
    if let Some(e) = first_error {
        eprintln!("failover: first failure: {e}");
    }
    Ok(())
}

/// A connection whose frames a task of its own reads, so a session can wait on both of its
/// connections and its frame clock at once without cutting a frame in half.
struct Conn {
    writer: tsunagu_endpoint::dial::Writer,
    rx: tokio::sync::mpsc::Receiver<Option<Body>>,
    reading: tokio::task::JoinHandle<()>,
}

impl Conn {
    fn new(peer: Peer) -> Self {
        let (tx, rx) = tokio::sync::mpsc::channel(64);
        let mut reader = peer.reader;
        let reading = tokio::spawn(async move {
            loop {
                let body = match reader.read_timeout(WAIT).await {
                    Ok(Some(raw)) => raw.frame.body,
                    _ => {
                        let _ = tx.send(None).await;
                        return;
                    }
                };
                if let Some(body) = body {
                    if tx.send(Some(body)).await.is_err() {
                        return;
                    }
                }
            }
        });
        Self {
            writer: peer.writer,
            rx,
            reading,
        }
    }
}

impl Drop for Conn {
    fn drop(&mut self) {
        self.reading.abort();
    }
}

/// The nodes endpoints may resume on now (`None`: draining or stopped).
type UpNodes = Arc<Mutex<Vec<Option<DialConfig>>>>;

/// What one streaming session showed across the moves.
struct Streamed {
    widest_gap: Duration,
    frames: u64,
    resumes: u32,
    consent_again: bool,
}

/// How a frame from the relay bears on one side of a streaming session.
enum Seen {
    Nothing,
    Screen,
    /// The connection is gone or the node asked the endpoint to move.
    Lost,
}

async fn on_body(body: Option<Body>, conn: &mut Conn, side: &mut Side) -> Result<Seen> {
    Ok(match body {
        None => Seen::Lost,
        Some(Body::Ping(p)) => {
            conn.writer
                .send(&frame(Body::Pong(pb::Pong { nonce: p.nonce })))
                .await?;
            Seen::Nothing
        }
        Some(Body::ResumeToken(t)) => {
            side.keep(t);
            Seen::Nothing
        }
        Some(Body::Ended(e)) if e.reason == pb::EndReason::Moved as i32 => Seen::Lost,
        Some(Body::Ended(e)) => bail!("the session ended: reason {}", e.reason),
        Some(Body::Data(d)) if d.channel == pb::Channel::Screen as i32 => Seen::Screen,
        Some(Body::Error(e)) => bail!("relay error: {}", e.message),
        Some(_) => Seen::Nothing,
    })
}

/// Resumes `side` on whichever node is up, trying them in turn until [`WAIT`] is over.
async fn resume_anywhere(side: &mut Side, up: &UpNodes, turn: &mut usize) -> Result<(Conn, bool)> {
    let deadline = Instant::now() + WAIT;
    loop {
        let nodes: Vec<DialConfig> = up
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .iter()
            .flatten()
            .cloned()
            .collect();
        if !nodes.is_empty() {
            *turn += 1;
            match side.resume(&nodes[*turn % nodes.len()]).await {
                Ok((peer, consent)) => return Ok((Conn::new(peer), consent)),
                Err(e) if Instant::now() >= deadline => return Err(e.context("no node took the session back")),
                Err(_) => {}
            }
        }
        anyhow::ensure!(Instant::now() < deadline, "no node took the session back");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Streams screen frames from the client to the operator until `stop`, resuming either side
/// wherever a node is up whenever its connection goes.
async fn stream(
    live: Live,
    index: usize,
    up: UpNodes,
    mut stop: tokio::sync::watch::Receiver<bool>,
) -> Result<Streamed> {
    let Live {
        op,
        client,
        mut op_side,
        mut client_side,
    } = live;
    let (mut op, mut client) = (Conn::new(op), Conn::new(client));
    let mut tick = tokio::time::interval(Duration::from_millis(100));
    let mut turn = index;
    let mut out = Streamed {
        widest_gap: Duration::ZERO,
        frames: 0,
        resumes: 0,
        consent_again: false,
    };
    let mut last_frame: Option<Instant> = None;
    let mut seq = 0u64;
    loop {
        let (mut op_lost, mut client_lost) = (false, false);
        tokio::select! {
            _ = tick.tick() => {
                seq += 1;
                let data = Body::Data(pb::Data {
                    channel: pb::Channel::Screen as i32,
                    seq,
                    payload: vec![0u8; 1024].into(),
                    stream: 0,
                });
                client_lost = client.writer.send(&frame(data)).await.is_err();
            }
            body = op.rx.recv() => match on_body(body.flatten(), &mut op, &mut op_side).await? {
                Seen::Screen => {
                    let now = Instant::now();
                    if let Some(before) = last_frame {
                        out.widest_gap = out.widest_gap.max(now - before);
                    }
                    last_frame = Some(now);
                    out.frames += 1;
                }
                Seen::Lost => op_lost = true,
                Seen::Nothing => {}
            },
            body = client.rx.recv() => client_lost = matches!(on_body(body.flatten(), &mut client, &mut client_side).await?, Seen::Lost),
            _ = stop.changed() => return Ok(out),
        }
        if op_lost {
            let (conn, consent) = resume_anywhere(&mut op_side, &up, &mut turn)
                .await
                .context("the operator's resume")?;
            op = conn;
            out.resumes += 1;
            out.consent_again |= consent;
        }
        if client_lost {
            let (conn, consent) = resume_anywhere(&mut client_side, &up, &mut turn)
                .await
                .context("the client's resume")?;
            client = conn;
            out.resumes += 1;
            out.consent_again |= consent;
        }
    }
}

/// The drain and rolling-restart variants (see the module documentation); prints one JSON
/// line.
pub async fn moves(grid: &mut GridUnderTest, bin: &Path, sessions: usize, event: GridEvent) -> Result<()> {
    let cfg: Vec<DialConfig> = grid.nodes.iter().map(|n| n.dial_config()).collect::<Result<_>>()?;
    let mut live = Vec::with_capacity(sessions);
    for i in 0..sessions {
        let client_cfg = if i % 2 == 0 { &cfg[0] } else { &cfg[1] };
        live.push(open(&cfg[0], client_cfg).await?);
    }
    let up: UpNodes = Arc::new(Mutex::new(cfg.into_iter().map(Some).collect()));
    let (stop_tx, stop) = tokio::sync::watch::channel(false);
    let tasks: Vec<_> = live
        .into_iter()
        .enumerate()
        .map(|(i, l)| tokio::spawn(stream(l, i, up.clone(), stop.clone())))
        .collect();
    // The frames flow for a while before anything moves.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let started = Instant::now();
    let steps: &[usize] = match event {
        GridEvent::Drain => &[0],
        GridEvent::Rolling => &[0, 1, 2],
        GridEvent::Kill => bail!("kill -9 is the failover scenario's own"),
    };
    let mut drained = Vec::new();
    for &node in steps {
        up.lock().unwrap_or_else(|e| e.into_inner())[node] = None;
        let t = Instant::now();
        grid.nodes[node].drain()?;
        drained.push(t.elapsed());
        if event == GridEvent::Rolling {
            grid.nodes[node].restart(bin)?;
            up.lock().unwrap_or_else(|e| e.into_inner())[node] = Some(grid.nodes[node].dial_config()?);
            // The restarted node is known to the grid before the next one goes.
            tokio::time::sleep(Duration::from_secs(2)).await;
        }
    }
    let moved_in = started.elapsed();
    tokio::time::sleep(Duration::from_secs(2)).await;
    let _ = stop_tx.send(true);
    let (mut gaps, mut failed, mut consents, mut resumes, mut first_error) = (Vec::new(), 0, 0, 0u64, None);
    for t in tasks {
        match t.await? {
            Ok(s) if s.frames > 0 => {
                gaps.push(s.widest_gap);
                consents += usize::from(s.consent_again);
                resumes += u64::from(s.resumes);
            }
            Ok(_) => {
                failed += 1;
                first_error.get_or_insert_with(|| "no frame reached the operator".to_string());
            }
            Err(e) => {
                failed += 1;
                first_error.get_or_insert(format!("{e:#}"));
            }
        }
    }
    let (g50, g99, gmax) = latency_fields(&mut gaps);
    let mut drain_times = drained;
    let (_, _, drain_max) = latency_fields(&mut drain_times);
    println!(
        "{}",
        serde_json::json!({
            "scenario": "failover", "event": match event { GridEvent::Drain => "drain", _ => "rolling_restart" },
            "sessions": sessions, "nodes_drained": steps.len(),
            "kept": gaps.len(), "kept_percent": (gaps.len() * 1000 / sessions.max(1)) as f64 / 10.0,
            "failed": failed, "new_consents": consents, "resumes": resumes,
            "widest_frame_gap_p50_us": g50, "widest_frame_gap_p99_us": g99, "widest_frame_gap_max_us": gmax,
            "slowest_drain_us": drain_max, "all_moves_s": moved_in.as_secs_f64(),
        })
    );
    if let Some(e) = first_error {
        eprintln!("failover: first failure: {e}");
    }
    Ok(())
}
