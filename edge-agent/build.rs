//! Generates the KServe v2 gRPC service (`proto/kserve_v2.proto`) with
//! tonic. The .proto is parsed by protox (pure Rust), so building needs no
//! `protoc`.

fn main() -> Result<(), Box<dyn std::error::Error>> {
    println!("cargo:rerun-if-changed=proto/kserve_v2.proto");
    let fds = protox::compile(["proto/kserve_v2.proto"], ["proto"])?;
    tonic_prost_build::configure().build_client(true).build_server(true).compile_fds(fds)?;
    Ok(())
}
