//! Generates the gRPC server of RocketMQ 5's `apache.rocketmq.v2.MessagingService` for the
//! grpc-broker test peer from proto/messaging_service.proto, with protox (pure Rust): no protoc
//! is needed to build.

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let proto = "proto/messaging_service.proto";
    println!("cargo:rerun-if-changed={proto}");
    let fds = protox::compile([proto], ["proto"])?;
    tonic_prost_build::configure()
        .build_client(false)
        .build_server(true)
        .compile_fds(fds)?;
    Ok(())
}
