//! Feeds arbitrary bytes to the frame decoder: it must never panic, and every frame it
//! accepts must re-encode to the same frame. Run with `cargo fuzz run decode` in `proto/`.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    tsunagu_proto::fuzz_decode(data);
});
