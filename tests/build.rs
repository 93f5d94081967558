//! Generates the gRPC server of RocketMQ 5's `apache.rocketmq.v2.MessagingService` for the
//! grpc-broker test peer from the agent's definitions (protocol/proto/rocketmq_v2.proto: one
//! place for the API's field numbers), with protox (pure Rust): no protoc is needed to build.

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let dir = "../protocol/proto";
    let proto = "../protocol/proto/rocketmq_v2.proto";
    println!("cargo:rerun-if-changed={proto}");
    let fds = protox::compile([proto], [dir])?;
    tonic_prost_build::configure()
        .build_client(false)
        .build_server(true)
        .compile_fds(fds)?;
    Ok(())
}
