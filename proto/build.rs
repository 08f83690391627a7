//! Compiles `proto/tsunagu.proto` with prost-build, using the protoc shipped by the
//! `protoc-bin-vendored` crate so a fresh machine needs no system protobuf compiler.
fn main() -> Result<(), Box<dyn std::error::Error>> {
    if std::env::var_os("PROTOC").is_none() {
        let protoc = protoc_bin_vendored::protoc_bin_path()?;
        // SAFETY: build scripts are single-threaded; nothing else reads the environment concurrently.
        unsafe { std::env::set_var("PROTOC", protoc) };
    }
    println!("cargo:rerun-if-changed=proto/tsunagu.proto");
    let mut config = prost_build::Config::new();
    // Payloads become `Bytes`, so decoding from a `Bytes` buffer slices instead of copying.
    config.bytes(["."]);
    config.compile_protos(&["proto/tsunagu.proto"], &["proto"])?;
    Ok(())
}
