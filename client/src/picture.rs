//! The captured picture: the one type screen capture fills and the H.264 encoder reads. It
//! lives in a leaf module of its own so capture and encoding both depend on it and never on
//! each other.

use std::time::Instant;

/// One captured picture: packed BGRX, `stride` bytes per row.
#[derive(Debug, Clone, Default)]
pub struct Picture {
    /// Width in pixels.
    pub width: usize,
    /// Height in pixels.
    pub height: usize,
    /// Bytes per row (at least `4 * width`).
    pub stride: usize,
    /// The pixels: byte 0 blue, 1 green, 2 red, 3 unused.
    pub bgrx: Vec<u8>,
    /// When the pixels were read.
    pub captured_at: Option<Instant>,
}

impl Picture {
    /// Refills this picture as `width` x `height` from pixels in red, green, blue order,
    /// `bytes_per_pixel` bytes each (3 for RGB, 4 for RGBA), rows `src_stride` bytes apart,
    /// and stamps it with the time now.
    pub fn fill_from_rgb(
        &mut self,
        width: usize,
        height: usize,
        src: &[u8],
        src_stride: usize,
        bytes_per_pixel: usize,
    ) {
        self.width = width;
        self.height = height;
        self.stride = width * 4;
        self.bgrx.resize(width * height * 4, 0);
        for y in 0..height {
            let row = &src[y * src_stride..y * src_stride + width * bytes_per_pixel];
            let dst = &mut self.bgrx[y * self.stride..(y + 1) * self.stride];
            for (d, s) in dst.chunks_exact_mut(4).zip(row.chunks_exact(bytes_per_pixel)) {
                d[0] = s[2];
                d[1] = s[1];
                d[2] = s[0];
                d[3] = 0;
            }
        }
        self.captured_at = Some(Instant::now());
    }

    /// The colour at (`x`, `y`) as RGB.
    pub fn rgb_at(&self, x: usize, y: usize) -> [u8; 3] {
        let i = y * self.stride + x * 4;
        [self.bgrx[i + 2], self.bgrx[i + 1], self.bgrx[i]]
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rgb_and_rgba_rows_become_bgrx() {
        let mut picture = Picture::default();
        // Two rows of two RGBA pixels, with two bytes of padding per source row.
        let rgba = [1, 2, 3, 9, 4, 5, 6, 9, 0, 0, 7, 8, 9, 9, 10, 11, 12, 9, 0, 0];
        picture.fill_from_rgb(2, 2, &rgba, 10, 4);
        assert_eq!((picture.width, picture.height, picture.stride), (2, 2, 8));
        assert_eq!(picture.rgb_at(0, 0), [1, 2, 3]);
        assert_eq!(picture.rgb_at(1, 1), [10, 11, 12]);
        assert_eq!(picture.bgrx[3], 0);
        assert!(picture.captured_at.is_some());
        let rgb = [1, 2, 3, 4, 5, 6];
        picture.fill_from_rgb(1, 2, &rgb, 3, 3);
        assert_eq!((picture.width, picture.height, picture.stride), (1, 2, 4));
        assert_eq!(picture.rgb_at(0, 1), [4, 5, 6]);
    }
}
