//! Generates the Open Inference Protocol's gRPC service from its .proto,
//! with a pure-Rust protobuf compiler (no protoc to install).

fn main() -> Result<(), Box<dyn std::error::Error>> {
    println!("cargo:rerun-if-changed=proto/inference.proto");
    let fds = protox::compile(["inference.proto"], ["proto"])?;
    tonic_prost_build::configure()
        .build_client(false)
        .build_transport(false)
        // Our codec: a message that does not decode is the client's error.
        .codec_path("crate::serve::grpc::Codec")
        .compile_fds(fds)?;
    Ok(())
}
