//! `tsunagu-load screen`: a scrolling 1080p desktop from the client app to the operator app
//! through the relay, on loopback and over slow links; capture-to-display latency, frames
//! per second and the bit rate that reached the operator.
//!
//! Real parts throughout: Xvfb (1920x1080x24) with a page scrolling one line per step at
//! 60 Hz, the release relay, operator and client binaries (client `--screen x11`, operator
//! headless: its `frame` events carry `latency_us` = decoded on the operator − captured on
//! the client, one clock), and for the link cases a network namespace behind `link.rs`'s
//! emulated link with the client in it. Needs root for the link cases; a case that cannot
//! set up its link says why and is skipped.

use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context, Result};
use serde_json::{json, Value};

use super::link::{Link, LinkShape};
use super::scene::{Canvas, Painter, Scene};
use super::{add_account, load_config, serve, PASSWORD};

/// One way the client reaches the relay.
pub struct Case {
    pub name: &'static str,
    /// What the desktop shows.
    pub scene: Scene,
    /// `None`: loopback.
    pub shape: Option<LinkShape>,
    /// The client's frame-rate cap (`--fps`).
    pub fps: u32,
}

/// The cases `tsunagu-load screen` runs: loopback at the client's default cap (30 fps) and
/// at 60; a customer's uplink of 5 Mbit/s with a 40 ms round trip and a 200 ms bottleneck
/// buffer; the same losing 1% of packets each way; a link too slow for the stream
/// (500 kbit/s), where the client must cut its rate; and the 5 Mbit/s and a 2 Mbit/s link
/// with a video playing beside the page (frames far larger than the page's).
pub fn cases() -> Vec<Case> {
    let uplink = LinkShape {
        rate_bps: 5_000_000,
        rtt: Duration::from_millis(40),
        loss: 0.0,
        queue: Duration::from_millis(200),
    };
    let fps = 30;
    vec![
        Case {
            name: "loopback",
            scene: Scene::Scrolling,
            shape: None,
            fps,
        },
        Case {
            name: "loopback_60fps",
            scene: Scene::Scrolling,
            shape: None,
            fps: 60,
        },
        Case {
            name: "5mbit_40ms",
            scene: Scene::Scrolling,
            shape: Some(uplink),
            fps,
        },
        Case {
            name: "5mbit_40ms_1pct_loss",
            scene: Scene::Scrolling,
            shape: Some(LinkShape { loss: 0.01, ..uplink }),
            fps,
        },
        Case {
            name: "500kbit_40ms",
            scene: Scene::Scrolling,
            shape: Some(LinkShape {
                rate_bps: 500_000,
                ..uplink
            }),
            fps,
        },
        Case {
            name: "video_5mbit_40ms",
            scene: Scene::ScrollingWithVideo,
            shape: Some(uplink),
            fps,
        },
        Case {
            name: "video_2mbit_40ms",
            scene: Scene::ScrollingWithVideo,
            shape: Some(LinkShape {
                rate_bps: 2_000_000,
                ..uplink
            }),
            fps,
        },
    ]
}

/// An app under test: its JSON events, read on a thread of their own.
struct App {
    name: &'static str,
    child: Child,
    stdin: ChildStdin,
    events: mpsc::Receiver<Value>,
}

impl App {
    fn spawn(name: &'static str, mut cmd: Command) -> Result<Self> {
        // `RUST_LOG` set for the load generator reaches the apps (their logs go to stderr).
        if std::env::var_os("RUST_LOG").is_none() {
            cmd.env("RUST_LOG", "warn");
        }
        let mut child = cmd
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .with_context(|| format!("cannot start the {name}"))?;
        let stdout = child.stdout.take().ok_or_else(|| anyhow!("no stdout"))?;
        let stdin = child.stdin.take().ok_or_else(|| anyhow!("no stdin"))?;
        let (tx, events) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(|l| l.ok()) {
                if let Ok(v) = serde_json::from_str::<Value>(&line) {
                    if tx.send(v).is_err() {
                        return;
                    }
                }
            }
        });
        Ok(Self {
            name,
            child,
            stdin,
            events,
        })
    }

    fn send(&mut self, cmd: Value) -> Result<()> {
        writeln!(self.stdin, "{cmd}")?;
        Ok(self.stdin.flush()?)
    }

    /// The next event named `event`, within `WAIT`.
    fn expect(&mut self, event: &str) -> Result<Value> {
        let deadline = Instant::now() + super::WAIT;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            let v = self
                .events
                .recv_timeout(left)
                .map_err(|_| anyhow!("the {} sent no {event:?} event", self.name))?;
            if v["event"] == event {
                return Ok(v);
            }
            if v["event"] == "error" {
                bail!("the {} reported an error: {v}", self.name);
            }
        }
    }

    /// Events that have arrived by now.
    fn drain(&mut self) -> Vec<Value> {
        self.events.try_iter().collect()
    }
}

impl Drop for App {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A private Xvfb on a free display number, killed when dropped.
struct XServer {
    child: Child,
    display: String,
}

impl XServer {
    fn start() -> Result<Self> {
        for n in (200 + std::process::id() % 500)..1000 {
            if Path::new(&format!("/tmp/.X11-unix/X{n}")).exists() || Path::new(&format!("/tmp/.X{n}-lock")).exists() {
                continue;
            }
            let display = format!(":{n}");
            let mut child = Command::new("Xvfb")
                .arg(&display)
                .args(["-screen", "0", "1920x1080x24", "-nolisten", "tcp", "-ac", "-noreset"])
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .context("cannot start Xvfb (apt-get install xvfb)")?;
            let deadline = Instant::now() + Duration::from_secs(15);
            while Instant::now() < deadline {
                if child.try_wait()?.is_some() {
                    break; // another server took the number
                }
                if x11rb::connect(Some(&display)).is_ok() {
                    return Ok(Self { child, display });
                }
                std::thread::sleep(Duration::from_millis(50));
            }
            let _ = child.kill();
        }
        bail!("no free X display for Xvfb")
    }
}

impl Drop for XServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn percentile(sorted: &[u64], p: f64) -> u64 {
    if sorted.is_empty() {
        return 0;
    }
    sorted[((sorted.len() - 1) as f64 * p).round() as usize]
}

/// Runs every case for `seconds` each and prints one JSON line per case.
pub fn screen(relay_bin: &Path, seconds: u64, only: Option<&str>) -> Result<()> {
    let bins = relay_bin
        .parent()
        .ok_or_else(|| anyhow!("no binary folder"))?
        .to_path_buf();
    let x = XServer::start()?;
    let canvas = Canvas::open(&x.display).map_err(|e| anyhow!("cannot draw on Xvfb: {e}"))?;
    for case in cases() {
        if only.is_some_and(|o| o != case.name) {
            continue;
        }
        match run_case(&bins, relay_bin, &x, &canvas, &case, Duration::from_secs(seconds)) {
            Ok(line) => println!("{line}"),
            Err(e) => println!(
                "{}",
                json!({"scenario": "screen", "link": case.name, "skipped": format!("{e:#}")})
            ),
        }
    }
    Ok(())
}

fn run_case(
    bins: &Path,
    relay_bin: &Path,
    x: &XServer,
    canvas: &Canvas,
    case: &Case,
    limit: Duration,
) -> Result<Value> {
    let link = case
        .shape
        .map(Link::start)
        .transpose()
        .context("cannot set up the link")?;
    let host = link
        .as_ref()
        .map_or_else(|| "127.0.0.1".to_string(), |l| l.near.clone());
    // The relay listens where the client can reach it and names that address in its
    // certificate.
    let dir = tempfile::tempdir()?;
    let data = dir.path().join("data");
    let config = dir.path().join("relay.toml");
    std::fs::write(&config, format!("{}[tls]\nnames = [\"{host}\"]\n", load_config()))?;
    add_account(relay_bin, &data, &config, "operator", "load")?;
    let (mut relay, addr, _) = serve(relay_bin, &data, &config, &format!("{host}:0"))?;
    let spec = format!("{host}:{}", addr.port());
    let ca = data.join("tls/ca.pem");
    let mut operator = Command::new(bins.join("tsunagu-operator"));
    operator
        .args(["--relay", &spec, "--user", "load", "--headless", "--ca"])
        .arg(&ca)
        .env("TSUNAGU_PASSWORD", PASSWORD);
    let mut op = App::spawn("operator", operator)?;
    let code = op.expect("code")?["code"]
        .as_str()
        .ok_or_else(|| anyhow!("no code"))?
        .to_string();
    let client_bin: PathBuf = bins.join("tsunagu-client");
    let mut client = match &link {
        Some(l) => l.command(&client_bin),
        None => Command::new(&client_bin),
    };
    client
        .env("DISPLAY", &x.display)
        .args([
            "--relay",
            &spec,
            "--headless",
            "--screen",
            "x11",
            "--input",
            "log",
            "--fps",
            &case.fps.to_string(),
            "--ca",
        ])
        .arg(&ca)
        .arg(&code);
    let mut client = App::spawn("client", client)?;
    client.expect("consent_request")?;
    client.send(json!({"cmd": "consent", "grant": ["view"]}))?;
    op.expect("consent")?;
    let mut painter = Painter::setup(canvas);
    // (arrival since start, capture-to-display latency in µs, bytes)
    let mut samples: Vec<(Duration, u64, u64)> = Vec::new();
    let start = Instant::now();
    let step = Duration::from_secs(1) / 60;
    let mut next = start;
    while start.elapsed() < limit {
        painter.step(canvas, case.scene);
        next += step;
        std::thread::sleep(next.saturating_duration_since(Instant::now()));
        for v in op.drain() {
            if v["event"] == "frame" {
                if let Some(us) = v["latency_us"].as_u64() {
                    samples.push((start.elapsed(), us, v["bytes"].as_u64().unwrap_or(0)));
                }
            }
        }
    }
    let _ = op.send(json!({"cmd": "end"}));
    std::thread::sleep(Duration::from_millis(300));
    drop((op, client));
    let _ = relay.kill();
    let _ = relay.wait();
    // The session's start (its keyframe, the decoder's set-up, the rate finding its level)
    // is left out: the first two seconds.
    let steady: Vec<(Duration, u64, u64)> = samples.into_iter().filter(|s| s.0 >= Duration::from_secs(2)).collect();
    if steady.len() < 8 {
        bail!(
            "only {} frames reached the operator after the first two seconds",
            steady.len()
        );
    }
    let span = steady[steady.len() - 1]
        .0
        .saturating_sub(steady[0].0)
        .as_secs_f64()
        .max(1e-3);
    let mut sorted: Vec<u64> = steady.iter().map(|s| s.1).collect();
    sorted.sort_unstable();
    // Whether a queue grows: the median latency of the second quarter and of the last.
    let quarter_p50 = |i: usize| {
        let n = steady.len() / 4;
        let mut q: Vec<u64> = steady[i * n..(i + 1) * n].iter().map(|s| s.1).collect();
        q.sort_unstable();
        percentile(&q, 0.5) as f64 / 1000.0
    };
    // Frames a second and kbit/s over the last quarter's frames: the session once its
    // encoder has settled (tuned for motion or not).
    let last_quarter = {
        let q = &steady[steady.len() - steady.len() / 4..];
        let span = q[q.len() - 1].0.saturating_sub(q[0].0).as_secs_f64().max(1e-3);
        let bytes: u64 = q.iter().map(|s| s.2).sum();
        (
            ((q.len() - 1) as f64 / span * 10.0).round() / 10.0,
            (bytes as f64 * 8.0 / span / 1000.0).round(),
        )
    };
    let ms = |us: u64| (us as f64 / 100.0).round() / 10.0;
    let bytes: u64 = steady.iter().map(|s| s.2).sum();
    Ok(json!({
        "scenario": "screen",
        "scene": case.scene.name(),
        "link": case.name,
        "fps_cap": case.fps,
        "seconds": (span * 10.0).round() / 10.0,
        "frames": sorted.len(),
        "fps": (sorted.len() as f64 / span * 10.0).round() / 10.0,
        "kbit_per_s": (bytes as f64 * 8.0 / span / 1000.0).round(),
        "p50_ms": ms(percentile(&sorted, 0.5)),
        "p95_ms": ms(percentile(&sorted, 0.95)),
        "max_ms": ms(sorted[sorted.len() - 1]),
        "p50_ms_second_quarter": quarter_p50(1),
        "p50_ms_last_quarter": quarter_p50(3),
        "fps_last_quarter": last_quarter.0,
        "kbit_per_s_last_quarter": last_quarter.1,
    }))
}
