//! Feeds arbitrary bytes to the frame decoder: it must never panic, and every frame it
//! accepts must re-encode within the frame limit to an equal frame (see
//! `tsunagu_proto::fuzz_decode`). Run from `proto/` with the command in the README
//! ("Supply chain and fuzzing"); the hand-made seeds are in `fuzz/seeds/decode`.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    tsunagu_proto::fuzz_decode(data);
});
