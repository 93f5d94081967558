//! Generates the RocketMQ 5 gRPC protobuf types from `proto/`, without a protoc on the machine.

use std::path::PathBuf;

fn main() {
    let proto_dir = PathBuf::from(std::env::var("CARGO_MANIFEST_DIR").unwrap()).join("proto");
    let file = proto_dir.join("rocketmq_v2.proto");
    println!("cargo:rerun-if-changed={}", file.display());
    let descriptors = protox::compile([&file], [&proto_dir])
        .unwrap_or_else(|e| panic!("compiling {}: {e}", file.display()));
    prost_build::Config::new()
        // Bodies stay slices of the frame they came in: never copied.
        .bytes(["."])
        .compile_fds(descriptors)
        .unwrap_or_else(|e| panic!("generating Rust for {}: {e}", file.display()));
}
