//! Screen capture: where the pictures the operator sees come from.
//!
//! Three sources behind one trait, [`Capturer`]:
//!
//! * [`ShmCapturer`]: the fast path on X11. The X server copies the monitor's pixels into a
//!   System V shared-memory segment we attached (`MIT-SHM`, `ShmGetImage`) through x11rb, so a
//!   1920x1080 frame costs one round trip and one memory copy instead of 8 MB over the socket.
//! * [`XcapCapturer`]: the portable fallback through the `xcap` crate (X11, Wayland portals,
//!   other systems); about 120 ms per 1080p frame on Xvfb, so it caps the stream near 8 fps.
//! * [`SyntheticCapturer`]: the predictable test desktop ([`crate::synthetic`]).
//!
//! Every capturer fills a [`Picture`]: packed 32-bit BGRX pixels (the X server's native
//! little-endian layout, the cheapest to produce), which [`crate::encode`] turns into I420.

use std::time::Instant;

use thiserror::Error;

pub use crate::picture::Picture;

/// Why capture failed.
#[derive(Debug, Error)]
pub enum CaptureError {
    /// No display to capture (no `DISPLAY`, server unreachable).
    #[error("cannot open the X display: {0}")]
    NoDisplay(String),
    /// The server lacks something the fast path needs (MIT-SHM, a 32-bit pixel format).
    #[error("the X server cannot do shared-memory capture: {0}")]
    Unsupported(String),
    /// The requested monitor does not exist.
    #[error("no monitor {0} (see the monitor list in the log)")]
    NoMonitor(usize),
    /// A capture request failed.
    #[error("capture failed: {0}")]
    Failed(String),
}

/// A monitor: the rectangle of the X screen it shows.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Monitor {
    /// Output name (`"screen"` when RandR knows none).
    pub name: String,
    /// Left edge in root-window coordinates.
    pub x: i32,
    /// Top edge in root-window coordinates.
    pub y: i32,
    /// Width in pixels.
    pub width: u32,
    /// Height in pixels.
    pub height: u32,
    /// Whether it is the primary monitor.
    pub primary: bool,
}

/// Which monitor to capture.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum MonitorChoice {
    /// The primary monitor, else the first one.
    #[default]
    Primary,
    /// The monitor at this index in [`ShmCapturer::monitors`] order (RandR order).
    Index(usize),
}

/// A screen source.
pub trait Capturer: Send {
    /// The captured area's size in pixels (what the operator's coordinates refer to).
    fn dimensions(&self) -> (usize, usize);
    /// The captured area's top-left corner on the X screen (input is offset by it).
    fn origin(&self) -> (i32, i32) {
        (0, 0)
    }
    /// Captures the current picture into `into` (reusing its buffer).
    fn capture(&mut self, into: &mut Picture) -> Result<(), CaptureError>;
    /// A short name for logs and benchmarks (`shm`, `xcap`, `synthetic`).
    fn name(&self) -> &'static str;
}

/// Picks the monitor `choice` names from `monitors`.
pub fn choose_monitor(monitors: &[Monitor], choice: MonitorChoice) -> Result<Monitor, CaptureError> {
    match choice {
        MonitorChoice::Primary => monitors
            .iter()
            .find(|m| m.primary)
            .or_else(|| monitors.first())
            .cloned()
            .ok_or(CaptureError::NoMonitor(0)),
        MonitorChoice::Index(i) => monitors.get(i).cloned().ok_or(CaptureError::NoMonitor(i)),
    }
}

/// The H.264 encoder needs even sides: the capture area is cut to even width and height
/// (losing at most one column and one row on odd-sized monitors).
fn even(n: u32) -> u32 {
    n & !1
}

pub use shm::ShmCapturer;

mod shm {
    //! The MIT-SHM fast path.

    use super::*;
    use x11rb::connection::{Connection, RequestConnection};
    use x11rb::protocol::randr::ConnectionExt as _;
    use x11rb::protocol::shm::ConnectionExt as _;
    use x11rb::protocol::xproto::{ConnectionExt as _, ImageFormat};
    use x11rb::rust_connection::RustConnection;

    /// A System V shared-memory segment mapped into this process and attached by the server.
    struct Segment {
        addr: *mut libc::c_void,
        len: usize,
        xid: u32,
    }

    // SAFETY: the mapping is owned by this struct alone; the raw pointer is only read through
    // `&self` methods while the owning `ShmCapturer` is borrowed.
    unsafe impl Send for Segment {}

    impl Segment {
        /// Creates a private segment of `len` bytes, maps it, and marks it for removal so it
        /// disappears when the last user detaches (even if we crash).
        fn create(len: usize) -> Result<(i32, *mut libc::c_void), CaptureError> {
            // SAFETY: plain libc calls; every result is checked before use.
            unsafe {
                let id = libc::shmget(libc::IPC_PRIVATE, len, libc::IPC_CREAT | 0o600);
                if id < 0 {
                    return Err(CaptureError::Unsupported(format!(
                        "shmget: {}",
                        std::io::Error::last_os_error()
                    )));
                }
                let addr = libc::shmat(id, std::ptr::null(), libc::SHM_RDONLY);
                if addr as isize == -1 {
                    libc::shmctl(id, libc::IPC_RMID, std::ptr::null_mut());
                    return Err(CaptureError::Unsupported(format!(
                        "shmat: {}",
                        std::io::Error::last_os_error()
                    )));
                }
                Ok((id, addr))
            }
        }

        fn bytes(&self) -> &[u8] {
            // SAFETY: `addr` maps `len` readable bytes for as long as `self` lives.
            unsafe { std::slice::from_raw_parts(self.addr as *const u8, self.len) }
        }
    }

    impl Drop for Segment {
        fn drop(&mut self) {
            // SAFETY: `addr` came from shmat and is detached once.
            unsafe {
                libc::shmdt(self.addr);
            }
        }
    }

    /// Captures one monitor of an X11 display through MIT-SHM.
    pub struct ShmCapturer {
        conn: RustConnection,
        root: u32,
        monitor: Monitor,
        width: u32,
        height: u32,
        segment: Segment,
    }

    impl ShmCapturer {
        /// Opens `display` (`None`: `$DISPLAY`), checks MIT-SHM and a 32-bit-per-pixel
        /// depth-24/32 root, picks the monitor, and attaches a segment of the right size.
        pub fn open(display: Option<&str>, choice: MonitorChoice) -> Result<Self, CaptureError> {
            let (conn, screen_num) = x11rb::connect(display).map_err(|e| CaptureError::NoDisplay(e.to_string()))?;
            let setup = conn.setup();
            let screen = &setup.roots[screen_num];
            let root = screen.root;
            let depth = screen.root_depth;
            let bpp = setup
                .pixmap_formats
                .iter()
                .find(|f| f.depth == depth)
                .map(|f| f.bits_per_pixel);
            if !(depth == 24 || depth == 32) || bpp != Some(32) {
                return Err(CaptureError::Unsupported(format!(
                    "root depth {depth}, {bpp:?} bits per pixel"
                )));
            }
            let ext = conn
                .extension_information(x11rb::protocol::shm::X11_EXTENSION_NAME)
                .map_err(|e| CaptureError::Unsupported(e.to_string()))?;
            if ext.is_none() {
                return Err(CaptureError::Unsupported("no MIT-SHM extension".into()));
            }
            let monitors = Self::list_monitors(&conn, root, screen.width_in_pixels, screen.height_in_pixels);
            let monitor = choose_monitor(&monitors, choice)?;
            let (width, height) = (even(monitor.width), even(monitor.height));
            if width == 0 || height == 0 {
                return Err(CaptureError::Unsupported(format!(
                    "monitor {} is {}x{}",
                    monitor.name, monitor.width, monitor.height
                )));
            }
            let len = width as usize * height as usize * 4;
            let (shmid, addr) = Segment::create(len)?;
            let xid = conn.generate_id().map_err(|e| CaptureError::Failed(e.to_string()))?;
            let attached = conn
                .shm_attach(xid, shmid as u32, false)
                .map_err(|e| CaptureError::Failed(e.to_string()))
                .and_then(|c| {
                    c.check()
                        .map_err(|e| CaptureError::Unsupported(format!("ShmAttach: {e}")))
                });
            // The server has attached (or failed to): remove the id now so the segment goes
            // away with its last user whatever happens to this process.
            // SAFETY: `shmid` is the segment created above.
            unsafe {
                libc::shmctl(shmid, libc::IPC_RMID, std::ptr::null_mut());
            }
            let segment = Segment { addr, len, xid };
            attached?;
            tracing::info!(monitor = %monitor.name, x = monitor.x, y = monitor.y, width, height, "X11 shared-memory capture ready");
            Ok(Self {
                conn,
                root,
                monitor,
                width,
                height,
                segment,
            })
        }

        /// The monitors RandR reports (RandR 1.5 `GetMonitors`), or the whole screen.
        fn list_monitors(conn: &RustConnection, root: u32, width: u16, height: u16) -> Vec<Monitor> {
            let whole = || {
                vec![Monitor {
                    name: "screen".into(),
                    x: 0,
                    y: 0,
                    width: width.into(),
                    height: height.into(),
                    primary: true,
                }]
            };
            let reply = match conn.randr_get_monitors(root, true).ok().and_then(|c| c.reply().ok()) {
                Some(r) if !r.monitors.is_empty() => r,
                _ => return whole(),
            };
            reply
                .monitors
                .iter()
                .map(|m| {
                    let name = conn
                        .get_atom_name(m.name)
                        .ok()
                        .and_then(|c| c.reply().ok())
                        .map(|r| String::from_utf8_lossy(&r.name).into_owned())
                        .unwrap_or_else(|| format!("monitor-{}", m.name));
                    Monitor {
                        name,
                        x: m.x.into(),
                        y: m.y.into(),
                        width: m.width.into(),
                        height: m.height.into(),
                        primary: m.primary,
                    }
                })
                .collect()
        }

        /// The monitors of `display`, in RandR order.
        pub fn monitors(display: Option<&str>) -> Result<Vec<Monitor>, CaptureError> {
            let (conn, screen_num) = x11rb::connect(display).map_err(|e| CaptureError::NoDisplay(e.to_string()))?;
            let screen = &conn.setup().roots[screen_num];
            Ok(Self::list_monitors(
                &conn,
                screen.root,
                screen.width_in_pixels,
                screen.height_in_pixels,
            ))
        }

        /// The monitor being captured.
        pub fn monitor(&self) -> &Monitor {
            &self.monitor
        }
    }

    impl Drop for ShmCapturer {
        fn drop(&mut self) {
            let _ = self.conn.shm_detach(self.segment.xid);
            let _ = self.conn.flush();
        }
    }

    impl Capturer for ShmCapturer {
        fn dimensions(&self) -> (usize, usize) {
            (self.width as usize, self.height as usize)
        }

        fn origin(&self) -> (i32, i32) {
            (self.monitor.x, self.monitor.y)
        }

        fn capture(&mut self, into: &mut Picture) -> Result<(), CaptureError> {
            let reply = self
                .conn
                .shm_get_image(
                    self.root,
                    self.monitor.x as i16,
                    self.monitor.y as i16,
                    self.width as u16,
                    self.height as u16,
                    !0,
                    ImageFormat::Z_PIXMAP.into(),
                    self.segment.xid,
                    0,
                )
                .map_err(|e| CaptureError::Failed(e.to_string()))?
                .reply()
                .map_err(|e| CaptureError::Failed(e.to_string()))?;
            let len = self.segment.len;
            if (reply.size as usize) < len {
                return Err(CaptureError::Failed(format!(
                    "ShmGetImage returned {} bytes, {len} expected",
                    reply.size
                )));
            }
            into.width = self.width as usize;
            into.height = self.height as usize;
            into.stride = self.width as usize * 4;
            into.bgrx.resize(len, 0);
            into.bgrx.copy_from_slice(self.segment.bytes());
            into.captured_at = Some(Instant::now());
            Ok(())
        }

        fn name(&self) -> &'static str {
            "shm"
        }
    }
}

/// Extra attempts for a failed xcap capture before the frame is given up.
const XCAP_RETRIES: u32 = 2;

/// The portable fallback: one `xcap` monitor.
pub struct XcapCapturer {
    monitor: xcap::Monitor,
    origin: (i32, i32),
    width: usize,
    height: usize,
}

impl XcapCapturer {
    /// Opens the chosen monitor through xcap (primary by default; index in xcap's order).
    pub fn open(choice: MonitorChoice) -> Result<Self, CaptureError> {
        let monitors = xcap::Monitor::all().map_err(|e| CaptureError::NoDisplay(e.to_string()))?;
        let monitor = match choice {
            MonitorChoice::Primary => {
                let primary = monitors
                    .iter()
                    .position(|m| m.is_primary().unwrap_or(false))
                    .unwrap_or(0);
                monitors.into_iter().nth(primary)
            }
            MonitorChoice::Index(i) => monitors.into_iter().nth(i),
        };
        let index = match choice {
            MonitorChoice::Index(i) => i,
            MonitorChoice::Primary => 0,
        };
        let monitor = monitor.ok_or(CaptureError::NoMonitor(index))?;
        let w = monitor.width().map_err(|e| CaptureError::Failed(e.to_string()))?;
        let h = monitor.height().map_err(|e| CaptureError::Failed(e.to_string()))?;
        let x = monitor.x().map_err(|e| CaptureError::Failed(e.to_string()))?;
        let y = monitor.y().map_err(|e| CaptureError::Failed(e.to_string()))?;
        Ok(Self {
            monitor,
            origin: (x, y),
            width: even(w) as usize,
            height: even(h) as usize,
        })
    }
}

impl Capturer for XcapCapturer {
    fn dimensions(&self) -> (usize, usize) {
        (self.width, self.height)
    }

    fn origin(&self) -> (i32, i32) {
        self.origin
    }

    fn capture(&mut self, into: &mut Picture) -> Result<(), CaptureError> {
        // xcap opens fresh X connections on every capture, and one in a few dozen fails
        // transiently on Xvfb ("Connection error"): retry before giving up on this frame.
        let mut attempt = 0;
        let image = loop {
            match self.monitor.capture_image() {
                Ok(image) => break image,
                Err(e) if attempt >= XCAP_RETRIES => return Err(CaptureError::Failed(e.to_string())),
                Err(_) => attempt += 1,
            }
        };
        let (iw, ih) = (image.width() as usize, image.height() as usize);
        if iw < self.width || ih < self.height {
            return Err(CaptureError::Failed(format!(
                "xcap returned {iw}x{ih}, {}x{} expected",
                self.width, self.height
            )));
        }
        into.fill_from_rgb(self.width, self.height, image.as_raw(), iw * 4, 4);
        Ok(())
    }

    fn name(&self) -> &'static str {
        "xcap"
    }
}

/// The synthetic desktop as a capturer.
pub struct SyntheticCapturer {
    screen: crate::synthetic::SyntheticScreen,
}

impl SyntheticCapturer {
    /// A synthetic desktop of `width` x `height` (even sides).
    pub fn new(width: usize, height: usize) -> Self {
        Self {
            screen: crate::synthetic::SyntheticScreen::new(width, height),
        }
    }
}

impl Capturer for SyntheticCapturer {
    fn dimensions(&self) -> (usize, usize) {
        self.screen.dimensions()
    }

    fn capture(&mut self, into: &mut Picture) -> Result<(), CaptureError> {
        let (w, h) = self.screen.dimensions();
        let rgb = self.screen.next_frame();
        into.fill_from_rgb(w, h, rgb, w * 3, 3);
        Ok(())
    }

    fn name(&self) -> &'static str {
        "synthetic"
    }
}

/// Which X11 capture path to use.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum X11Backend {
    /// Shared memory, falling back to xcap if the server cannot do it.
    #[default]
    Auto,
    /// Shared memory only.
    Shm,
    /// xcap only.
    Xcap,
}

/// Opens an X11 capturer: the shared-memory fast path, or xcap when `backend` says so or
/// the fast path is unavailable (logged).
pub fn open_x11(backend: X11Backend, choice: MonitorChoice) -> Result<Box<dyn Capturer>, CaptureError> {
    match backend {
        X11Backend::Shm => Ok(Box::new(ShmCapturer::open(None, choice)?)),
        X11Backend::Xcap => Ok(Box::new(XcapCapturer::open(choice)?)),
        X11Backend::Auto => match ShmCapturer::open(None, choice) {
            Ok(c) => Ok(Box::new(c)),
            Err(e @ (CaptureError::NoDisplay(_) | CaptureError::NoMonitor(_))) => Err(e),
            Err(e) => {
                tracing::warn!(error = %e, "shared-memory capture unavailable; using xcap");
                Ok(Box::new(XcapCapturer::open(choice)?))
            }
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn mon(name: &str, primary: bool) -> Monitor {
        Monitor {
            name: name.into(),
            x: 0,
            y: 0,
            width: 100,
            height: 100,
            primary,
        }
    }

    #[test]
    fn primary_monitor_is_the_default_choice() {
        let ms = [mon("a", false), mon("b", true)];
        assert_eq!(choose_monitor(&ms, MonitorChoice::Primary).unwrap().name, "b");
        assert_eq!(choose_monitor(&ms, MonitorChoice::Index(0)).unwrap().name, "a");
        assert!(choose_monitor(&ms, MonitorChoice::Index(2)).is_err());
        assert_eq!(
            choose_monitor(&[mon("a", false)], MonitorChoice::Primary).unwrap().name,
            "a"
        );
        assert!(choose_monitor(&[], MonitorChoice::Primary).is_err());
    }

    #[test]
    fn synthetic_capture_is_bgrx() {
        let mut c = SyntheticCapturer::new(64, 48);
        let mut p = Picture::default();
        c.capture(&mut p).unwrap();
        assert_eq!((p.width, p.height, p.stride), (64, 48, 256));
        // Second bar (yellow) at x = 12.
        assert_eq!(p.rgb_at(12, 4), [255, 255, 0]);
    }
}
