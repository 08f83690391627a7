//! A synthetic animated desktop, the `--screen synthetic` source.
//!
//! It stands in for real screen capture in tests and demos, so its picture is predictable:
//!
//! * The top two thirds ([`BARS_HEIGHT_FRACTION`]) hold eight static vertical colour bars
//!   ([`BAR_COLOURS`], left to right). [`expected_colour`] tells which colour a point in that
//!   region has, so a test can sample the operator's decoded picture and compare.
//! * The bottom third is a dark band ([`BAND_COLOUR`]) with a white square
//!   ([`SQUARE_COLOUR`]) that moves [`SQUARE_STEP`] pixels to the right every frame
//!   (wrapping), so every frame differs from the one before.

/// Colours of the eight static bars, left to right (RGB): white, yellow, cyan, green,
/// magenta, red, blue, black — the classic test pattern, easy to tell apart after lossy
/// compression.
pub const BAR_COLOURS: [[u8; 3]; 8] = [
    [255, 255, 255],
    [255, 255, 0],
    [0, 255, 255],
    [0, 255, 0],
    [255, 0, 255],
    [255, 0, 0],
    [0, 0, 255],
    [0, 0, 0],
];

/// The bars fill the top `2/3` of the picture (numerator, denominator).
pub const BARS_HEIGHT_FRACTION: (usize, usize) = (2, 3);

/// Background of the animated band at the bottom.
pub const BAND_COLOUR: [u8; 3] = [32, 32, 32];

/// Colour of the moving square.
pub const SQUARE_COLOUR: [u8; 3] = [255, 255, 255];

/// Pixels the square moves per frame: big enough that consecutive frames clearly differ.
pub const SQUARE_STEP: usize = 8;

/// Height of the bars region for a picture `height` pixels tall.
pub fn bars_height(height: usize) -> usize {
    height * BARS_HEIGHT_FRACTION.0 / BARS_HEIGHT_FRACTION.1
}

/// The colour the synthetic desktop has at `(x, y)` in every frame, for points in the static
/// bars region; `None` for points in the animated band or outside the picture.
pub fn expected_colour(width: usize, height: usize, x: usize, y: usize) -> Option<[u8; 3]> {
    if x >= width || y >= bars_height(height) {
        return None;
    }
    Some(BAR_COLOURS[x * BAR_COLOURS.len() / width])
}

/// Renders frames of the synthetic desktop into an RGB buffer.
pub struct SyntheticScreen {
    width: usize,
    height: usize,
    rgb: Vec<u8>,
    frame: u64,
}

impl SyntheticScreen {
    /// A desktop of `width` x `height` pixels. Both must be even (H.264 4:2:0 needs it);
    /// the caller validates.
    pub fn new(width: usize, height: usize) -> Self {
        let mut rgb = vec![0u8; width * height * 3];
        let bars = bars_height(height);
        for y in 0..bars {
            for x in 0..width {
                let c = BAR_COLOURS[x * BAR_COLOURS.len() / width];
                let i = (y * width + x) * 3;
                rgb[i..i + 3].copy_from_slice(&c);
            }
        }
        Self {
            width,
            height,
            rgb,
            frame: 0,
        }
    }

    /// Width and height in pixels.
    pub fn dimensions(&self) -> (usize, usize) {
        (self.width, self.height)
    }

    /// Draws the next frame and returns it as packed RGB (3 bytes per pixel, row-major).
    pub fn next_frame(&mut self) -> &[u8] {
        let (w, h) = (self.width, self.height);
        let band_top = bars_height(h);
        let band_height = h - band_top;
        let side = (band_height / 2).max(2).min(w);
        let travel = (w - side).max(1);
        let square_x = (self.frame as usize * SQUARE_STEP) % travel;
        let square_y = band_top + (band_height - side) / 2;
        for y in band_top..h {
            for x in 0..w {
                let inside = x >= square_x && x < square_x + side && y >= square_y && y < square_y + side;
                let c = if inside { SQUARE_COLOUR } else { BAND_COLOUR };
                let i = (y * w + x) * 3;
                self.rgb[i..i + 3].copy_from_slice(&c);
            }
        }
        self.frame += 1;
        &self.rgb
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bars_are_where_expected_colour_says() {
        let mut s = SyntheticScreen::new(640, 360);
        let rgb = s.next_frame().to_vec();
        for (x, y) in [(40, 10), (120, 100), (600, 200), (330, 239)] {
            let i = (y * 640 + x) * 3;
            assert_eq!(Some([rgb[i], rgb[i + 1], rgb[i + 2]]), expected_colour(640, 360, x, y));
        }
        assert_eq!(expected_colour(640, 360, 10, 300), None);
        assert_eq!(expected_colour(640, 360, 640, 10), None);
    }

    #[test]
    fn consecutive_frames_differ() {
        let mut s = SyntheticScreen::new(64, 48);
        let a = s.next_frame().to_vec();
        let b = s.next_frame().to_vec();
        assert_ne!(a, b);
    }
}
