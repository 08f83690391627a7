//! A private X server for tests that need a real desktop: Xvfb on a free display number,
//! killed when dropped. Tests never touch the machine's own `DISPLAY`.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

/// Waiting for Xvfb to accept connections.
const START_WAIT: Duration = Duration::from_secs(15);

/// A running Xvfb.
pub struct Xvfb {
    child: Child,
    /// `:N`.
    pub display: String,
    /// Screen size.
    pub size: (u32, u32),
}

impl Xvfb {
    /// Starts Xvfb with one `width`x`height`x24 screen on a display number from 90 up that
    /// has neither a socket nor a lock file, and waits until it accepts connections.
    pub fn start(width: u32, height: u32) -> Self {
        let seed = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.subsec_nanos())
            .unwrap_or(0)
            ^ std::process::id();
        Self::start_from(width, height, seed)
    }

    /// [`start`](Self::start) trying numbers in the order `seed` gives: servers started
    /// at once with one seed all try the same numbers at the same moment.
    pub fn start_from(width: u32, height: u32, seed: u32) -> Self {
        for attempt in 0..50u32 {
            let n = 90 + (seed.wrapping_add(attempt.wrapping_mul(7919)) % 900);
            if Path::new(&format!("/tmp/.X11-unix/X{n}")).exists() || Path::new(&format!("/tmp/.X{n}-lock")).exists() {
                continue;
            }
            let display = format!(":{n}");
            let mut child = Command::new("Xvfb")
                .arg(&display)
                .args([
                    "-screen",
                    "0",
                    &format!("{width}x{height}x24"),
                    "-nolisten",
                    "tcp",
                    "-ac",
                    "-noreset",
                ])
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .expect("Xvfb starts (apt-get install xvfb)");
            let deadline = Instant::now() + START_WAIT;
            loop {
                if let Ok(Some(_)) = child.try_wait() {
                    break; // lost a race for this number: try another
                }
                if x11rb::connect(Some(&display)).is_ok() {
                    if holds_lock(&child, n) {
                        return Self {
                            child,
                            display,
                            size: (width, height),
                        };
                    }
                    // Another server started on this number at the same moment and won
                    // its lock (a parallel test, say): what answered is that one, which
                    // its owner will kill. Ours is on its way out; try another number.
                    let _ = child.kill();
                    let _ = child.wait();
                    break;
                }
                if Instant::now() > deadline {
                    let _ = child.kill();
                    panic!("Xvfb {display} did not accept connections within {START_WAIT:?}");
                }
                std::thread::sleep(Duration::from_millis(50));
            }
        }
        panic!("no free X display number found");
    }

    /// A command with `DISPLAY` set to this server, and a configuration folder of its own
    /// (`XDG_CONFIG_HOME`), so what one app remembers never leaks into another test.
    pub fn command(&self, program: impl AsRef<std::ffi::OsStr>) -> Command {
        static NEXT: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
        let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let config = Path::new(env!("CARGO_TARGET_TMPDIR"))
            .join("xdg-config")
            .join(format!("{}-{n}", std::process::id()));
        let _ = std::fs::remove_dir_all(&config);
        let mut cmd = Command::new(program);
        cmd.env("DISPLAY", &self.display).env("XDG_CONFIG_HOME", config);
        cmd
    }

    /// The workspace binary `name` on this display, dialing `relay` (`--relay`, `--ca`)
    /// with `args` in between.
    pub fn app(&self, name: &str, relay: &super::RelayProcess, args: &[&str]) -> Command {
        let mut cmd = self.command(super::bin(name));
        cmd.args(["--relay", &relay.spec()])
            .args(args)
            .arg("--ca")
            .arg(relay.ca());
        cmd
    }

    /// Runs `xdotool ARGS` on this display; panics if it fails.
    pub fn xdotool(&self, args: &[&str]) -> String {
        let out = self.command("xdotool").args(args).output().expect("xdotool runs");
        assert!(
            out.status.success(),
            "xdotool {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// Saves a PNG of the whole screen (`import -window root`) to `path`.
    pub fn screenshot(&self, path: &Path) -> PathBuf {
        let out = self
            .command("import")
            .args(["-window", "root"])
            .arg(path)
            .output()
            .expect("import runs");
        assert!(out.status.success(), "import: {}", String::from_utf8_lossy(&out.stderr));
        path.to_path_buf()
    }
}

/// Whether the X server `child` holds display `n`'s lock file, which names the process
/// that won the number (`%10d\n`).
fn holds_lock(child: &Child, n: u32) -> bool {
    std::fs::read_to_string(format!("/tmp/.X{n}-lock"))
        .ok()
        .and_then(|pid| pid.trim().parse::<u32>().ok())
        == Some(child.id())
}

impl Drop for Xvfb {
    /// Asked to stop (SIGTERM), the server removes its lock file and socket; killed
    /// outright it leaves both behind, and its number stays out of use until /tmp is
    /// cleared. A server that has not stopped within a second is killed.
    fn drop(&mut self) {
        super::terminate(&mut self.child, Duration::from_secs(1));
    }
}

/// A test-side X connection that paints the desktop and plays the local user.
pub struct Desk {
    pub conn: x11rb::rust_connection::RustConnection,
    pub root: u32,
    pub window: u32,
    gc: u32,
}

impl Desk {
    /// Connects to `xvfb` and maps a window covering the whole screen.
    pub fn open(xvfb: &Xvfb) -> Self {
        use x11rb::connection::Connection;
        use x11rb::protocol::xproto::*;
        let (conn, screen_num) = x11rb::connect(Some(&xvfb.display)).expect("X connection");
        let screen = conn.setup().roots[screen_num].clone();
        let window = conn.generate_id().unwrap();
        conn.create_window(
            screen.root_depth,
            window,
            screen.root,
            0,
            0,
            xvfb.size.0 as u16,
            xvfb.size.1 as u16,
            0,
            WindowClass::INPUT_OUTPUT,
            0,
            &CreateWindowAux::new().background_pixel(0x202020).override_redirect(1),
        )
        .unwrap();
        conn.map_window(window).unwrap();
        let gc = conn.generate_id().unwrap();
        conn.create_gc(
            gc,
            window,
            &CreateGCAux::new().foreground(0xffffff).graphics_exposures(0),
        )
        .unwrap();
        conn.flush().unwrap();
        let desk = Self {
            conn,
            root: screen.root,
            window,
            gc,
        };
        desk.sync();
        desk
    }

    /// Waits until the server has handled everything sent so far.
    pub fn sync(&self) {
        use x11rb::protocol::xproto::ConnectionExt;
        self.conn.get_input_focus().unwrap().reply().unwrap();
    }

    /// Fills a rectangle with `rgb` (0xRRGGBB).
    pub fn fill(&self, rgb: u32, x: i16, y: i16, w: u16, h: u16) {
        use x11rb::connection::Connection;
        use x11rb::protocol::xproto::*;
        self.conn
            .change_gc(self.gc, &ChangeGCAux::new().foreground(rgb))
            .unwrap();
        self.conn
            .poly_fill_rectangle(
                self.window,
                self.gc,
                &[Rectangle {
                    x,
                    y,
                    width: w,
                    height: h,
                }],
            )
            .unwrap();
        self.conn.flush().unwrap();
        self.sync();
    }

    /// Copies a region of the window onto itself (a scroll).
    pub fn copy(&self, sx: i16, sy: i16, dx: i16, dy: i16, w: u16, h: u16) {
        use x11rb::connection::Connection;
        use x11rb::protocol::xproto::*;
        self.conn
            .copy_area(self.window, self.window, self.gc, sx, sy, dx, dy, w, h)
            .unwrap();
        self.conn.flush().unwrap();
    }

    /// Where the pointer is.
    pub fn pointer(&self) -> (i32, i32) {
        use x11rb::protocol::xproto::ConnectionExt;
        let r = self.conn.query_pointer(self.root).unwrap().reply().unwrap();
        (r.root_x.into(), r.root_y.into())
    }

    /// Moves the pointer as the local user would (XTest, from this connection).
    pub fn user_moves_pointer(&self, x: i16, y: i16) {
        use x11rb::connection::Connection;
        use x11rb::protocol::xtest::ConnectionExt;
        self.conn
            .xtest_fake_input(x11rb::protocol::xproto::MOTION_NOTIFY_EVENT, 0, 0, self.root, x, y, 0)
            .unwrap();
        self.conn.flush().unwrap();
        self.sync();
    }
}
