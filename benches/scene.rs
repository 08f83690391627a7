//! The desktop the screen benchmarks draw on (`cargo bench --bench capture`,
//! `tsunagu-load screen`): a window covering an X screen, and the scenes painted on it — a
//! still desktop, typing in a terminal, a page of text scrolling one line per step, and that
//! page with a video playing beside it.

use x11rb::connection::Connection;
use x11rb::protocol::xproto::{
    ChangeGCAux, ConnectionExt, CreateGCAux, CreateWindowAux, ImageFormat, Rectangle, WindowClass,
};
use x11rb::rust_connection::RustConnection;

/// A window covering the whole X screen, painted with plain rectangles.
pub struct Canvas {
    conn: RustConnection,
    window: u32,
    gc: u32,
}

type Failure = Box<dyn std::error::Error + Send + Sync>;

impl Canvas {
    /// Connects to `display` and maps a window covering its first screen.
    pub fn open(display: &str) -> Result<Self, Failure> {
        let (conn, screen_num) = x11rb::connect(Some(display))?;
        let screen = conn.setup().roots[screen_num].clone();
        let window = conn.generate_id()?;
        conn.create_window(
            screen.root_depth,
            window,
            screen.root,
            0,
            0,
            screen.width_in_pixels,
            screen.height_in_pixels,
            0,
            WindowClass::INPUT_OUTPUT,
            0,
            &CreateWindowAux::new().background_pixel(0x202020).override_redirect(1),
        )?;
        conn.map_window(window)?;
        let gc = conn.generate_id()?;
        conn.create_gc(
            gc,
            window,
            &CreateGCAux::new().foreground(0xffffff).graphics_exposures(0),
        )?;
        conn.flush()?;
        let canvas = Self { conn, window, gc };
        canvas.sync();
        Ok(canvas)
    }

    /// Waits until the server has drawn everything sent so far.
    pub fn sync(&self) {
        if let Ok(cookie) = self.conn.get_input_focus() {
            let _ = cookie.reply();
        }
    }

    /// Fills a rectangle with `rgb` (0xRRGGBB).
    pub fn fill(&self, rgb: u32, x: i16, y: i16, width: u16, height: u16) {
        let _ = self.conn.change_gc(self.gc, &ChangeGCAux::new().foreground(rgb));
        let _ = self
            .conn
            .poly_fill_rectangle(self.window, self.gc, &[Rectangle { x, y, width, height }]);
        let _ = self.conn.flush();
    }

    /// Draws `pixels` (BGRX, `width` x `height`) at `(x, y)`, in strips that fit in one
    /// request each.
    pub fn put(&self, x: i16, y: i16, width: u16, height: u16, pixels: &[u8]) {
        let row = usize::from(width) * 4;
        let strip = 32u16;
        let mut top = 0u16;
        while top < height {
            let rows = strip.min(height - top);
            let start = usize::from(top) * row;
            let _ = self.conn.put_image(
                ImageFormat::Z_PIXMAP,
                self.window,
                self.gc,
                width,
                rows,
                x,
                y + top as i16,
                0,
                24,
                &pixels[start..start + usize::from(rows) * row],
            );
            top += rows;
        }
        let _ = self.conn.flush();
    }

    /// Copies a region of the window onto itself (a scroll).
    pub fn copy(&self, sx: i16, sy: i16, dx: i16, dy: i16, width: u16, height: u16) {
        let _ = self
            .conn
            .copy_area(self.window, self.window, self.gc, sx, sy, dx, dy, width, height);
        let _ = self.conn.flush();
    }
}

/// What changes on the screen between steps.
#[derive(Clone, Copy, Debug)]
// `tsunagu-load screen` scrolls only; the capture benchmark runs every scene.
#[allow(dead_code)]
pub enum Scene {
    Idle,
    Typing,
    Scrolling,
    /// The scrolling page with a video playing beside it: a 480x270 region of 4x4 blocks
    /// in new colours every step, which compresses poorly (large frames).
    ScrollingWithVideo,
}

#[allow(dead_code)]
impl Scene {
    pub fn name(self) -> &'static str {
        match self {
            Scene::Idle => "idle",
            Scene::Typing => "typing",
            Scene::Scrolling => "scrolling",
            Scene::ScrollingWithVideo => "scrolling_with_video",
        }
    }
}

/// The terminal and page rectangles.
const TERM: (i16, i16, u16, u16) = (100, 100, 1200, 700);
const PAGE: (i16, i16, u16, u16) = (400, 150, 1200, 800);
/// The video region (beside the page).
const VIDEO: (i16, i16, u16, u16) = (1400, 100, 480, 270);
/// One text line of the page, in pixels.
const LINE: u16 = 24;
/// One terminal character cell.
const CELL: (u16, u16) = (9, 18);

/// Draws the scenes on a 1920x1080 canvas.
pub struct Painter {
    step: u32,
}

impl Painter {
    /// A desktop: background, a "terminal" and a "page" of text-like lines.
    pub fn setup(canvas: &Canvas) -> Self {
        canvas.fill(0x3a6ea5, 0, 0, 1920, 1080);
        canvas.fill(0xe0e0e0, 0, 1040, 1920, 40);
        canvas.fill(0xffffff, PAGE.0, PAGE.1, PAGE.2, PAGE.3);
        let mut p = Self { step: 0 };
        for line in 0..(PAGE.3 / LINE) {
            p.page_line(canvas, PAGE.1 + (line * LINE) as i16, line as u32);
        }
        canvas.fill(0x101010, TERM.0, TERM.1, TERM.2, TERM.3);
        canvas.sync();
        p
    }

    /// One line of "words": grey bars of varying width on white.
    fn page_line(&mut self, canvas: &Canvas, y: i16, seed: u32) {
        canvas.fill(0xffffff, PAGE.0, y, PAGE.2, LINE);
        let mut x = PAGE.0 + 20;
        let mut s = seed.wrapping_mul(2654435761);
        while x < PAGE.0 + PAGE.2 as i16 - 120 {
            s ^= s << 13;
            s ^= s >> 17;
            s ^= s << 5;
            let w = 20 + (s % 90) as u16;
            canvas.fill(if s.is_multiple_of(7) { 0x1a0dab } else { 0x303030 }, x, y + 6, w, 12);
            x += w as i16 + 8;
        }
    }

    /// The page scrolls by one line.
    fn scroll(&mut self, canvas: &Canvas) {
        canvas.copy(PAGE.0, PAGE.1 + LINE as i16, PAGE.0, PAGE.1, PAGE.2, PAGE.3 - LINE);
        let y = PAGE.1 + (PAGE.3 - LINE) as i16;
        self.page_line(canvas, y, 1000 + self.step);
    }

    /// A new picture in the video region: 4x4 blocks of pseudo-random colours.
    fn video(&mut self, canvas: &Canvas) {
        let (w, h) = (VIDEO.2 as usize, VIDEO.3 as usize);
        let mut s = self.step.wrapping_mul(2654435761) | 1;
        let mut pixels = vec![0u8; w * h * 4];
        for by in 0..h / 4 {
            for bx in 0..w / 4 {
                s ^= s << 13;
                s ^= s >> 17;
                s ^= s << 5;
                let colour = s.to_le_bytes();
                for y in by * 4..by * 4 + 4 {
                    for x in bx * 4..bx * 4 + 4 {
                        let o = (y * w + x) * 4;
                        pixels[o..o + 3].copy_from_slice(&colour[..3]);
                    }
                }
            }
        }
        canvas.put(VIDEO.0, VIDEO.1, VIDEO.2, VIDEO.3, &pixels);
    }

    /// One step of `scene`; returns when the server has drawn it.
    pub fn step(&mut self, canvas: &Canvas, scene: Scene) {
        self.step += 1;
        match scene {
            Scene::Idle => {}
            Scene::Typing => {
                let cols = TERM.2 / CELL.0 - 2;
                let rows = TERM.3 / CELL.1 - 2;
                let n = self.step as u16;
                let (col, row) = (n % cols, (n / cols) % rows);
                let x = TERM.0 + ((col + 1) * CELL.0) as i16;
                let y = TERM.1 + ((row + 1) * CELL.1) as i16;
                // A "glyph": two strokes in the cell, varying with the character.
                canvas.fill(0xd0d0d0, x + 1, y + 3, 2, 12);
                canvas.fill(0xd0d0d0, x + 1 + (n % 5) as i16, y + 3 + (n % 9) as i16, 5, 2);
            }
            Scene::Scrolling => self.scroll(canvas),
            Scene::ScrollingWithVideo => {
                self.scroll(canvas);
                self.video(canvas);
            }
        }
        canvas.sync();
    }
}
