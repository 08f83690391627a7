//! Resuming a session over in-memory streams, with the test playing the relay (and, through
//! it, the other endpoint): the relay drops the link mid-session, the app dials again by
//! itself, presents its token signed with its session key, and the session goes on — chat
//! arriving once, input numbered on, files going on from where they were. A refusal, a
//! `MOVED` end and the other side's absence are covered too.

use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::time::Duration;

use bytes::Bytes;
use prost::Message;
use ring::signature::{UnparsedPublicKey, ED25519};
use sha2::{Digest, Sha256};
use tokio::io::{DuplexStream, ReadHalf, WriteHalf};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tsunagu_endpoint::chat::ReliableChat;
use tsunagu_endpoint::dial::{self, Connected, RelayEntry};
use tsunagu_endpoint::driver::{self, App, Core, Events, Handled, LinkSettings, Lost, Redial, Step};
use tsunagu_endpoint::headless::Outcome;
use tsunagu_endpoint::resume::{ConnectionEvent, Resync, Role};
use tsunagu_endpoint::transfer::{FileCommand, FileEvent, INITIAL_CREDIT};
use tsunagu_proto::pb::{self, frame::Body, Channel, EndReason, ErrorCode, Frame};
use tsunagu_proto::transport::{FrameReader, FrameWriter};

const MAX_FRAME: usize = tsunagu_proto::limits::DEFAULT_MAX_FRAME;
const SESSION: &str = "s-resume";
/// The relay keeps our place this long; every test resumes well within it.
const WINDOW_MS: u64 = 20_000;
/// No step of these tests takes anywhere near this; a hang fails instead of blocking CI.
const STEP: Duration = Duration::from_secs(15);

#[derive(Debug, Clone, PartialEq, Eq)]
enum Ev {
    Error {
        code: String,
        message: String,
    },
    Ended {
        reason: String,
    },
    Chat {
        text: String,
    },
    File(FileEvent),
    Connection(ConnectionEvent),
    /// The consent request reached the app.
    Asked,
    /// The app was told to catch up (a keyframe, for the client).
    Resynced {
        ours: bool,
    },
}
tsunagu_endpoint::app_event!(Ev);

enum Cmd {
    Chat(String),
    Input(Vec<u8>),
    File(FileCommand),
}

/// A client-like app: joins with its resume key, reports what reaches it.
#[derive(Default)]
struct Joiner {
    joined: bool,
}

impl App for Joiner {
    const ROLE: Role = Role::Client;
    type Event = Ev;
    type Command = Cmd;
    type Wake = Infallible;

    async fn start(&mut self, core: &mut Core<Ev>) -> Result<(), Lost> {
        core.send(Body::Join(pb::Join {
            code: "12345678".into(),
            host_name: "pc-01".into(),
            resume_key: core.resume_key(),
        }))
        .await
    }

    async fn on_frame(&mut self, core: &mut Core<Ev>, body: Body) -> Handled {
        if let Body::ConsentRequest(_) = body {
            self.joined = true;
            core.emit(Ev::Asked).await;
        }
        Ok(Step::Continue)
    }

    async fn on_data(&mut self, _core: &mut Core<Ev>, _channel: Channel, _seq: u64, _payload: Bytes) -> Handled {
        Ok(Step::Continue)
    }

    async fn on_command(&mut self, core: &mut Core<Ev>, command: Cmd) -> Handled {
        match command {
            Cmd::Chat(text) => core.send_chat(text).await?,
            Cmd::Input(payload) => {
                core.send_data(Channel::Input, payload).await?;
            }
            Cmd::File(fc) => core.file_command(fc).await,
        }
        Ok(Step::Continue)
    }

    async fn next_wake(&mut self) -> Infallible {
        std::future::pending().await
    }

    async fn on_wake(&mut self, _core: &mut Core<Ev>, wake: Infallible) -> Handled {
        match wake {}
    }

    async fn on_deadline(&mut self, _core: &mut Core<Ev>) -> Handled {
        Ok(Step::Continue)
    }

    fn error_ends_run(&self) -> bool {
        !self.joined
    }

    async fn on_ended(&mut self, _core: &mut Core<Ev>, _reason: pb::EndReason) -> bool {
        self.joined
    }

    fn lost_ends_as(&self) -> Option<&'static str> {
        None
    }

    async fn on_resync(&mut self, core: &mut Core<Ev>, why: Resync) -> Handled {
        core.emit(Ev::Resynced {
            ours: matches!(why, Resync::Resumed(_)),
        })
        .await;
        Ok(Step::Continue)
    }
}

/// The relay's side of one in-memory connection.
struct Relay {
    reader: FrameReader<ReadHalf<DuplexStream>>,
    writer: FrameWriter<WriteHalf<DuplexStream>>,
}

impl Relay {
    fn new(stream: DuplexStream) -> Self {
        let (r, w) = tokio::io::split(stream);
        Self {
            reader: FrameReader::new(r, MAX_FRAME),
            writer: FrameWriter::new(w, MAX_FRAME),
        }
    }

    async fn send(&mut self, body: Body) {
        self.writer.send(&Frame { body: Some(body) }).await.unwrap();
    }

    /// The next frame from the app; `None` once it closed the stream.
    async fn next(&mut self) -> Option<Body> {
        tokio::time::timeout(STEP, self.reader.read())
            .await
            .expect("the app sends in time")
            .unwrap()?
            .frame
            .body
    }

    /// The next frame that is not an ack-only chat message.
    async fn next_not_ack(&mut self) -> Option<Body> {
        loop {
            match self.next().await {
                Some(Body::Data(d)) if d.channel == Channel::Chat as i32 && chat(&d).id == 0 => continue,
                other => return other,
            }
        }
    }

    /// The `Hello` exchange as the relay does it.
    async fn greet(&mut self) {
        assert!(matches!(self.next().await, Some(Body::Hello(_))));
        self.send(tsunagu_proto::transport::hello("relay-test").body.unwrap())
            .await;
    }

    async fn token(&mut self, token: &[u8]) {
        self.send(Body::ResumeToken(pb::ResumeToken {
            session_id: SESSION.into(),
            token: Bytes::copy_from_slice(token),
            window_ms: WINDOW_MS,
        }))
        .await;
    }
}

fn chat(d: &pb::Data) -> pb::ChatMessage {
    pb::ChatMessage::decode(d.payload.clone()).unwrap()
}

fn data(channel: Channel, seq: u64, payload: Vec<u8>) -> Body {
    Body::Data(pb::Data {
        channel: channel as i32,
        seq,
        payload: payload.into(),
        stream: 0,
    })
}

/// Each dial is a fresh in-memory stream whose relay side goes to the test.
struct TestRedial {
    dials: mpsc::Sender<(usize, Relay)>,
}

impl Redial for TestRedial {
    fn relays(&self) -> usize {
        2
    }

    fn host(&self, relay: usize) -> String {
        format!("relay{relay}.test")
    }

    fn dial(&mut self, relay: usize) -> Pin<Box<dyn Future<Output = Result<Connected, String>> + Send + '_>> {
        Box::pin(async move {
            let (relays, apps) = tokio::io::duplex(1 << 20);
            self.dials
                .send((relay, Relay::new(relays)))
                .await
                .map_err(|_| "the test stopped".to_string())?;
            let peer: SocketAddr = format!("192.0.2.{}:443", 10 + relay).parse().unwrap();
            let local: SocketAddr = "192.0.2.20:50001".parse().unwrap();
            dial::greet(apps, MAX_FRAME, "resume-test/1", peer, local)
                .await
                .map_err(|e| e.to_string())
        })
    }
}

/// An app session against the test's relay.
struct Run {
    relay: Relay,
    dials: mpsc::Receiver<(usize, Relay)>,
    commands: mpsc::Sender<Cmd>,
    events: mpsc::Receiver<Ev>,
    outcome: JoinHandle<Outcome>,
    /// The resume key the app sent with `Join`.
    key: Bytes,
}

impl Run {
    /// Connects the app, takes its `Join`, asks for consent and hands out `first_token`.
    async fn start(first_token: &[u8]) -> Run {
        let (relays, apps) = tokio::io::duplex(1 << 20);
        let mut relay = Relay::new(relays);
        let (commands, command_rx) = mpsc::channel(8);
        let (event_tx, events) = mpsc::channel(64);
        let (dial_tx, dials) = mpsc::channel(4);
        let outcome = tokio::spawn(async move {
            let settings = LinkSettings {
                identity: None,
                relays: vec![RelayEntry {
                    host: "relay0.test".into(),
                    ports: vec![443],
                }],
                ca: tsunagu_endpoint::dial::ExtraCa::None,
                attempt_timeout: Duration::from_secs(5),
                idle_timeout: Duration::from_secs(45),
                write_timeout: Duration::from_secs(10),
                max_frame: MAX_FRAME,
                agent: "resume-test/1",
                standby: None,
            };
            let peer: SocketAddr = "192.0.2.10:443".parse().unwrap();
            let local: SocketAddr = "192.0.2.20:50000".parse().unwrap();
            let conn = dial::greet(apps, MAX_FRAME, settings.agent, peer, local).await.unwrap();
            let redial = Box::new(TestRedial { dials: dial_tx });
            driver::run_resumable(
                Joiner::default(),
                conn,
                &settings,
                redial,
                command_rx,
                Events::new(event_tx),
            )
            .await
        });
        relay.greet().await;
        let key = match relay.next().await {
            Some(Body::Join(j)) => j.resume_key,
            other => panic!("expected Join, got {other:?}"),
        };
        assert_eq!(key.len(), tsunagu_proto::resume::KEY_LEN, "Join carries an Ed25519 key");
        relay
            .send(Body::ConsentRequest(pb::ConsentRequest {
                session_id: SESSION.into(),
                operator: "alice".into(),
                permissions: vec![],
                timeout_ms: 60_000,
            }))
            .await;
        relay.token(first_token).await;
        let mut run = Run {
            relay,
            dials,
            commands,
            events,
            outcome,
            key,
        };
        assert_eq!(run.event().await, Ev::Asked);
        run
    }

    /// The next event but file progress.
    async fn event(&mut self) -> Ev {
        loop {
            let ev = tokio::time::timeout(STEP, self.events.recv())
                .await
                .expect("an event in time")
                .expect("an event");
            if !matches!(ev, Ev::File(FileEvent::FileProgress { .. })) {
                return ev;
            }
        }
    }

    /// Asks the app to send `path` and takes its offer as the relay sees it, with the
    /// app's "offered" event.
    async fn offer_file(&mut self, path: std::path::PathBuf) -> pb::FileOffer {
        self.command(Cmd::File(FileCommand::SendFile { path })).await;
        let offer = match self.relay.next().await {
            Some(Body::FileOffer(o)) => o,
            other => panic!("expected an offer, got {other:?}"),
        };
        assert!(matches!(self.event().await, Ev::File(FileEvent::FileOffered { .. })));
        offer
    }

    /// The receiver accepts transfer `id` and grants `credit` bytes.
    async fn accept_with_credit(&mut self, id: u32, credit: u64) {
        self.relay
            .send(Body::FileAnswer(pb::FileAnswer {
                transfer_id: id,
                accept: true,
            }))
            .await;
        self.relay
            .send(Body::FileCredit(pb::FileCredit {
                transfer_id: id,
                bytes: credit,
            }))
            .await;
    }

    async fn command(&self, cmd: Cmd) {
        assert!(self.commands.send(cmd).await.is_ok(), "the app takes commands");
    }

    /// The relay drops the connection; the app says it is reconnecting.
    async fn drop_link(&mut self, attempt: u32) {
        let (dead, _) = tokio::io::duplex(1);
        self.relay = Relay::new(dead);
        match self.event().await {
            Ev::Connection(ConnectionEvent::Reconnecting {
                attempt: a,
                window_ms,
                reason,
            }) => {
                assert_eq!((a, window_ms), (attempt, WINDOW_MS));
                assert_eq!(reason, "the relay closed the connection");
            }
            other => panic!("expected reconnecting, got {other:?}"),
        }
    }

    /// The app's next dial: `Hello`, then its `Resume`, whose token and signature are
    /// checked against what the relay handed out and the key from `Join`.
    async fn take_resume(&mut self, token: &[u8]) -> (usize, Relay) {
        let (index, mut relay) = tokio::time::timeout(STEP, self.dials.recv())
            .await
            .expect("the app dials again in time")
            .expect("a dial");
        relay.greet().await;
        match relay.next().await {
            Some(Body::Resume(r)) => {
                assert_eq!((r.session_id.as_str(), r.operator), (SESSION, false));
                assert_eq!(r.token.as_ref(), token, "the latest token is presented");
                let signed = tsunagu_proto::resume::signed_message(SESSION, false, &r.token);
                UnparsedPublicKey::new(&ED25519, &self.key)
                    .verify(&signed, &r.signature)
                    .expect("signed with the key sent in Join");
            }
            other => panic!("expected Resume, got {other:?}"),
        }
        (index, relay)
    }

    /// A resume the relay accepts: `Resumed` and a fresh token; the app reports it.
    async fn resume(&mut self, token: &[u8], resumes: u32, next_token: &[u8]) {
        let (index, mut relay) = self.take_resume(token).await;
        relay
            .send(Body::Resumed(pb::Resumed {
                session_id: SESSION.into(),
                resumes,
                node: format!("node-{index}"),
                operator: "alice".into(),
                consented: true,
            }))
            .await;
        relay.token(next_token).await;
        self.relay = relay;
        assert_eq!(
            self.event().await,
            Ev::Connection(ConnectionEvent::Reconnected {
                session_id: SESSION.into(),
                resumes,
                relay: format!("relay{index}.test:443"),
            })
        );
        assert_eq!(self.event().await, Ev::Resynced { ours: true });
    }
}

#[tokio::test]
async fn a_dropped_link_is_resumed_and_chat_arrives_once() {
    let mut run = Run::start(b"token-1").await;
    // The other side (played through the relay) numbers its chat too.
    let mut peer = ReliableChat::new();

    // The peer's message arrives at the app, which acknowledges it.
    let m = peer.send("hello from alice".into()).unwrap();
    run.relay.send(data(Channel::Chat, 1, m.encode_to_vec())).await;
    assert_eq!(
        run.event().await,
        Ev::Chat {
            text: "hello from alice".into()
        }
    );
    match run.relay.next().await {
        Some(Body::Data(d)) => assert_eq!((chat(&d).id, chat(&d).ack), (0, 1), "an ack-only message"),
        other => panic!("expected an ack, got {other:?}"),
    }
    // The app's message arrives; no acknowledgement makes it back before the drop.
    run.command(Cmd::Chat("before the drop".into())).await;
    let first = match run.relay.next().await {
        Some(Body::Data(d)) => chat(&d),
        other => panic!("expected chat, got {other:?}"),
    };
    assert_eq!((first.id, first.ack, first.text.as_str()), (1, 1, "before the drop"));
    assert_eq!(peer.receive(first), Some("before the drop".into()));

    run.drop_link(1).await;
    run.resume(b"token-1", 1, b"token-2").await;

    // What was not acknowledged goes again, and the peer does not show it twice.
    let again = match run.relay.next().await {
        Some(Body::Data(d)) => chat(&d),
        other => panic!("expected the re-sent chat, got {other:?}"),
    };
    assert_eq!((again.id, again.text.as_str()), (1, "before the drop"));
    assert_eq!(peer.receive(again), None, "delivered once");
    // The peer's message comes again too (its ack was lost): the app does not show it again,
    // and a new one after it is shown.
    run.relay.send(data(Channel::Chat, 2, m.encode_to_vec())).await;
    let m2 = peer.send("after the drop".into()).unwrap();
    run.relay.send(data(Channel::Chat, 3, m2.encode_to_vec())).await;
    assert_eq!(
        run.event().await,
        Ev::Chat {
            text: "after the drop".into()
        }
    );

    // A second drop: the token handed out after the first resume is the one presented.
    run.drop_link(2).await;
    run.resume(b"token-2", 2, b"token-3").await;

    // A third drop, and the relay refuses: the run ends as a lost connection, with the
    // relay's error.
    run.drop_link(3).await;
    let (_, mut relay) = run.take_resume(b"token-3").await;
    relay
        .send(Body::Error(pb::Error {
            code: ErrorCode::ResumeRefused as i32,
            message: "that session is gone".into(),
        }))
        .await;
    assert_eq!(run.event().await, Ev::error("resume_refused", "that session is gone"));
    assert_eq!(
        run.event().await,
        Ev::Ended {
            reason: "connection_lost".into()
        }
    );
    assert_eq!(run.outcome.await.unwrap(), Outcome::Unreachable);
}

#[tokio::test]
async fn input_numbers_carry_on_across_links() {
    let mut run = Run::start(b"t1").await;
    let mut seqs = Vec::new();
    for n in 0..3u8 {
        run.command(Cmd::Input(vec![n])).await;
        match run.relay.next().await {
            Some(Body::Data(d)) if d.channel == Channel::Input as i32 => seqs.push(d.seq),
            other => panic!("expected input, got {other:?}"),
        }
    }
    run.drop_link(1).await;
    run.resume(b"t1", 1, b"t2").await;
    for n in 3..5u8 {
        run.command(Cmd::Input(vec![n])).await;
        match run.relay.next_not_ack().await {
            Some(Body::Data(d)) if d.channel == Channel::Input as i32 => {
                assert_eq!(d.payload.as_ref(), &[n]);
                seqs.push(d.seq);
            }
            other => panic!("expected input, got {other:?}"),
        }
    }
    assert_eq!(seqs, vec![1, 2, 3, 4, 5], "no restart at 1 on the new link");
}

#[tokio::test]
async fn moved_resumes_elsewhere_and_the_other_side_away_holds_and_resends() {
    let mut run = Run::start(b"t1").await;
    run.command(Cmd::Chat("are you there?".into())).await;
    assert!(matches!(run.relay.next().await, Some(Body::Data(_))));
    // The other side drops: the app is told, and on its return the chat it may have missed
    // goes again.
    run.relay
        .send(Body::PeerConnection(pb::PeerConnection { away: true }))
        .await;
    assert_eq!(run.event().await, Ev::Connection(ConnectionEvent::PeerAway));
    run.relay
        .send(Body::PeerConnection(pb::PeerConnection { away: false }))
        .await;
    assert_eq!(run.event().await, Ev::Connection(ConnectionEvent::PeerBack));
    assert_eq!(run.event().await, Ev::Resynced { ours: false });
    match run.relay.next().await {
        Some(Body::Data(d)) => assert_eq!(chat(&d).id, 1),
        other => panic!("expected the re-sent chat, got {other:?}"),
    }
    // `MOVED` is no end: the app resumes on the next relay of its list.
    run.relay
        .send(Body::Ended(pb::Ended {
            reason: EndReason::Moved as i32,
        }))
        .await;
    match run.event().await {
        Ev::Connection(ConnectionEvent::Reconnecting { reason, .. }) => {
            assert_eq!(reason, "the session moved to another relay node")
        }
        other => panic!("expected reconnecting, got {other:?}"),
    }
    run.resume(b"t1", 1, b"t2").await;
}

#[tokio::test]
async fn a_file_being_received_goes_on_from_what_was_written() {
    let dir = tempfile::tempdir().unwrap();
    let content: Vec<u8> = (0..300_000u32).map(|i| (i % 251) as u8).collect();
    let sha: [u8; 32] = Sha256::digest(&content).into();
    let mut run = Run::start(b"t1").await;
    run.relay
        .send(Body::FileOffer(pb::FileOffer {
            transfer_id: 7,
            name: "report.bin".into(),
            size: content.len() as u64,
            sha256: Bytes::copy_from_slice(&sha),
        }))
        .await;
    assert!(matches!(
        run.event().await,
        Ev::File(FileEvent::FileOffer { id: 7, .. })
    ));
    run.command(Cmd::File(FileCommand::AcceptFile {
        id: 7,
        dir: dir.path().to_path_buf(),
    }))
    .await;
    assert!(matches!(run.relay.next().await, Some(Body::FileAnswer(a)) if a.accept));
    assert!(matches!(run.relay.next().await, Some(Body::FileCredit(_))));
    // 100 000 bytes arrive; the next 50 000 are lost with the link.
    let chunk = |from: usize, to: usize| {
        Body::Data(pb::Data {
            channel: Channel::File as i32,
            seq: 0,
            payload: Bytes::copy_from_slice(&content[from..to]),
            stream: 7,
        })
    };
    run.relay.send(chunk(0, 60_000)).await;
    run.relay.send(chunk(60_000, 100_000)).await;
    // A ping after the chunks: once it is answered, the chunks before it are written.
    run.relay.send(Body::Ping(pb::Ping { nonce: 5 })).await;
    assert!(matches!(run.relay.next().await, Some(Body::Pong(_))));
    run.drop_link(1).await;
    run.resume(b"t1", 1, b"t2").await;
    // The receiver says where to go on from and grants fresh credit.
    match run.relay.next().await {
        Some(Body::FileResume(r)) => assert_eq!((r.transfer_id, r.offset), (7, 100_000)),
        other => panic!("expected FileResume, got {other:?}"),
    }
    match run.relay.next().await {
        Some(Body::FileCredit(c)) => assert_eq!((c.transfer_id, c.bytes), (7, INITIAL_CREDIT)),
        other => panic!("expected fresh credit, got {other:?}"),
    }
    run.relay.send(chunk(100_000, content.len())).await;
    match run.event().await {
        Ev::File(FileEvent::FileSaved { id, path, size, sha256 }) => {
            assert_eq!((id, size), (7, content.len() as u64));
            assert_eq!(sha256, tsunagu_endpoint::transfer::hex(&sha));
            assert_eq!(std::fs::read(path).unwrap(), content, "the whole file, verified");
        }
        other => panic!("expected the file saved, got {other:?}"),
    }
}

#[tokio::test]
async fn a_file_being_sent_goes_on_from_the_receivers_offset() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("photo.raw");
    let content: Vec<u8> = (0..400_000u32).map(|i| (i % 253) as u8).collect();
    std::fs::write(&path, &content).unwrap();
    let mut run = Run::start(b"t1").await;
    let id = run.offer_file(path).await.transfer_id;
    // Credit for two chunks only, so the sender stops after them.
    let two_chunks = 2 * tsunagu_endpoint::transfer::CHUNK as u64;
    run.accept_with_credit(id, two_chunks).await;
    assert!(matches!(run.event().await, Ev::File(FileEvent::FileAccepted { .. })));
    let mut received = Vec::new();
    while (received.len() as u64) < two_chunks {
        match run.relay.next().await {
            Some(Body::Data(d)) if d.channel == Channel::File as i32 => received.extend_from_slice(&d.payload),
            other => panic!("expected file data, got {other:?}"),
        }
    }
    // The receiver only kept the first chunk; the second was lost with the link.
    received.truncate(tsunagu_endpoint::transfer::CHUNK);
    run.drop_link(1).await;
    run.resume(b"t1", 1, b"t2").await;
    run.relay
        .send(Body::FileResume(pb::FileResume {
            transfer_id: id,
            offset: received.len() as u64,
        }))
        .await;
    run.relay
        .send(Body::FileCredit(pb::FileCredit {
            transfer_id: id,
            bytes: content.len() as u64,
        }))
        .await;
    while received.len() < content.len() {
        match run.relay.next_not_ack().await {
            Some(Body::Data(d)) if d.channel == Channel::File as i32 => received.extend_from_slice(&d.payload),
            other => panic!("expected file data, got {other:?}"),
        }
    }
    assert_eq!(received, content, "the file goes on from the offset, nothing twice");
    run.relay
        .send(Body::FileDone(pb::FileDone {
            transfer_id: id,
            result: pb::FileResult::Completed as i32,
            reason: String::new(),
            from_receiver: true,
        }))
        .await;
    match run.event().await {
        Ev::File(FileEvent::FileSent { size, .. }) => assert_eq!(size, content.len() as u64),
        other => panic!("expected the file sent, got {other:?}"),
    }
}

#[tokio::test]
async fn a_file_cut_short_after_its_offer_fails_with_a_reason_on_both_sides() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("log.txt");
    let content: Vec<u8> = (0..300_000u32).map(|i| (i % 251) as u8).collect();
    std::fs::write(&path, &content).unwrap();
    let mut run = Run::start(b"t1").await;
    let id = run.offer_file(path.clone()).await.transfer_id;
    // Another program shortens the file between the offer and the answer.
    std::fs::write(&path, &content[..100_000]).unwrap();
    run.accept_with_credit(id, content.len() as u64).await;
    let mut received = 0usize;
    let done = loop {
        match run.relay.next().await {
            Some(Body::Data(d)) if d.channel == Channel::File as i32 => received += d.payload.len(),
            Some(Body::FileDone(done)) => break done,
            other => panic!("expected file data or its end, got {other:?}"),
        }
    };
    assert_eq!(received, 100_000, "what the file still had was sent");
    assert_eq!(done.result, pb::FileResult::Failed as i32);
    assert!(done.reason.contains("changed"), "{}", done.reason);
    loop {
        match run.event().await {
            Ev::File(FileEvent::FileFailed { reason, .. }) => {
                assert!(reason.contains("changed"), "{reason}");
                break;
            }
            Ev::File(FileEvent::FileAccepted { .. } | FileEvent::FileProgress { .. }) => {}
            other => panic!("expected the transfer to fail, got {other:?}"),
        }
    }
}

#[tokio::test]
async fn the_window_running_out_ends_as_a_lost_connection() {
    let mut run = Run::start(b"t1").await;
    // A short window this time: the next token says 1 s.
    run.relay
        .send(Body::ResumeToken(pb::ResumeToken {
            session_id: SESSION.into(),
            token: Bytes::from_static(b"t-short"),
            window_ms: 1_000,
        }))
        .await;
    // A ping makes sure the token was taken before the drop.
    run.relay.send(Body::Ping(pb::Ping { nonce: 1 })).await;
    assert!(matches!(run.relay.next().await, Some(Body::Pong(_))));
    let (dead, _) = tokio::io::duplex(1);
    run.relay = Relay::new(dead);
    assert!(matches!(
        run.event().await,
        Ev::Connection(ConnectionEvent::Reconnecting { window_ms: 1_000, .. })
    ));
    // Every dial reaches a relay that says nothing: no resume within the window.
    let mut silent = Vec::new();
    let ended = loop {
        tokio::select! {
            dial = run.dials.recv() => silent.push(dial),
            ev = run.events.recv() => break ev,
        }
    };
    match ended {
        Some(Ev::Error { code, message }) => {
            assert_eq!(code, "connection_lost");
            assert!(
                message.starts_with("no relay took the session back within 1s"),
                "{message}"
            );
        }
        other => panic!("expected connection_lost, got {other:?}"),
    }
    assert!(!silent.is_empty(), "it tried");
    assert_eq!(
        run.event().await,
        Ev::Ended {
            reason: "connection_lost".into()
        }
    );
    assert_eq!(run.outcome.await.unwrap(), Outcome::Unreachable);
}

#[tokio::test]
async fn file_messages_lost_in_a_drop_are_sent_again() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("report.pdf");
    let content: Vec<u8> = (0..100_000u32).map(|i| (i % 251) as u8).collect();
    std::fs::write(&path, &content).unwrap();
    let mut run = Run::start(b"t1").await;
    let offer = run.offer_file(path.clone()).await;
    // The offer is lost with the link: after the resume it comes again, the same.
    run.drop_link(1).await;
    run.resume(b"t1", 1, b"t2").await;
    match run.relay.next_not_ack().await {
        Some(Body::FileOffer(again)) => assert_eq!(again, offer),
        other => panic!("expected the offer again, got {other:?}"),
    }
    // The receiver accepted, but its answer was lost too: after its own resync it says where
    // it starts (nothing written yet), which is taken as the acceptance.
    run.relay
        .send(Body::FileResume(pb::FileResume {
            transfer_id: offer.transfer_id,
            offset: 0,
        }))
        .await;
    run.relay
        .send(Body::FileCredit(pb::FileCredit {
            transfer_id: offer.transfer_id,
            bytes: content.len() as u64,
        }))
        .await;
    assert!(matches!(run.event().await, Ev::File(FileEvent::FileAccepted { .. })));
    let mut received = Vec::new();
    while received.len() < content.len() {
        match run.relay.next_not_ack().await {
            Some(Body::Data(d)) if d.channel == Channel::File as i32 => received.extend_from_slice(&d.payload),
            other => panic!("expected file data, got {other:?}"),
        }
    }
    assert_eq!(received, content, "the whole file, once");

    // A second file is cancelled by its sender; that word is lost in a drop and said again.
    run.command(Cmd::File(FileCommand::SendFile { path })).await;
    let second = loop {
        match run.relay.next_not_ack().await {
            Some(Body::FileOffer(o)) => break o.transfer_id,
            Some(_) => {}
            None => panic!("the app closed the link"),
        }
    };
    assert!(matches!(run.event().await, Ev::File(FileEvent::FileOffered { id, .. }) if id == second));
    run.command(Cmd::File(FileCommand::CancelFile { id: second, side: None }))
        .await;
    let cancelled = loop {
        match run.relay.next_not_ack().await {
            Some(Body::FileDone(d)) if d.transfer_id == second => break d,
            Some(_) => {}
            None => panic!("the app closed the link"),
        }
    };
    assert!(matches!(run.event().await, Ev::File(FileEvent::FileCancelled { id, .. }) if id == second));
    run.drop_link(2).await;
    run.resume(b"t2", 2, b"t3").await;
    let again = loop {
        match run.relay.next_not_ack().await {
            Some(Body::FileDone(d)) if d.transfer_id == second => break d,
            Some(Body::FileOffer(o)) => panic!("the cancelled transfer was offered again: {o:?}"),
            Some(_) => {}
            None => panic!("the app closed the link"),
        }
    };
    assert_eq!(again, cancelled);
}
