//! The newest decoded picture, shared between the session (which decodes) and a viewer
//! (which draws). Only the newest picture is kept: a slow viewer skips pictures, it never
//! queues them.

use std::sync::{Arc, Mutex};

/// One decoded picture: RGB, 3 bytes a pixel, rows top to bottom.
#[derive(Debug, Clone, Default)]
pub struct SharedPicture {
    pub width: usize,
    pub height: usize,
    pub rgb: Vec<u8>,
    /// Screen-channel sequence number of the frame it came from.
    pub seq: u64,
}

type Wake = Arc<dyn Fn() + Send + Sync>;

/// A slot for the newest picture plus a callback that wakes the viewer. Cheap to clone.
#[derive(Clone, Default)]
pub struct PictureSink {
    slot: Arc<Mutex<Option<SharedPicture>>>,
    wake: Option<Wake>,
}

impl std::fmt::Debug for PictureSink {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("PictureSink")
    }
}

impl PictureSink {
    /// A sink that calls `wake` after each new picture.
    pub fn new(wake: impl Fn() + Send + Sync + 'static) -> Self {
        Self {
            slot: Arc::default(),
            wake: Some(Arc::new(wake)),
        }
    }

    /// Stores a picture, replacing any the viewer has not taken yet.
    pub fn put(&self, width: usize, height: usize, rgb: &[u8], seq: u64) {
        {
            let mut slot = self.slot.lock().unwrap_or_else(|p| p.into_inner());
            // Reuse the previous buffer when the viewer has not taken it.
            let mut picture = slot.take().unwrap_or_default();
            picture.rgb.clear();
            picture.rgb.extend_from_slice(rgb);
            picture.width = width;
            picture.height = height;
            picture.seq = seq;
            *slot = Some(picture);
        }
        if let Some(wake) = &self.wake {
            wake();
        }
    }

    /// Takes the newest picture, if one arrived since the last call.
    pub fn take(&self) -> Option<SharedPicture> {
        self.slot.lock().unwrap_or_else(|p| p.into_inner()).take()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};

    #[test]
    fn keeps_only_the_newest_and_wakes() {
        let wakes = Arc::new(AtomicUsize::new(0));
        let w = wakes.clone();
        let sink = PictureSink::new(move || {
            w.fetch_add(1, Ordering::SeqCst);
        });
        sink.put(1, 1, &[1, 2, 3], 1);
        sink.put(1, 1, &[4, 5, 6], 2);
        let p = sink.take().unwrap();
        assert_eq!((p.seq, p.rgb), (2, vec![4, 5, 6]));
        assert!(sink.take().is_none());
        assert_eq!(wakes.load(Ordering::SeqCst), 2);
    }
}
