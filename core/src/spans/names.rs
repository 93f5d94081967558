//! The names of span and resource attributes, spelled once: OpenTelemetry's semantic
//! conventions (messaging, RPC, network, resources) and mqtrace's own (`mqtrace.*`), which the
//! README lists. Tests spell them out literally, as the contract they check.

// Messaging (semantic conventions, RocketMQ's among them).
pub const MESSAGING_BATCH_MESSAGE_COUNT: &str = "messaging.batch.message_count";
pub const MESSAGING_CLIENT_ID: &str = "messaging.client.id";
pub const MESSAGING_CONSUMER_GROUP_NAME: &str = "messaging.consumer.group.name";
pub const MESSAGING_DESTINATION_NAME: &str = "messaging.destination.name";
pub const MESSAGING_DESTINATION_PARTITION_ID: &str = "messaging.destination.partition.id";
pub const MESSAGING_MESSAGE_BODY_SIZE: &str = "messaging.message.body.size";
pub const MESSAGING_MESSAGE_ID: &str = "messaging.message.id";
pub const MESSAGING_OPERATION_NAME: &str = "messaging.operation.name";
pub const MESSAGING_OPERATION_TYPE: &str = "messaging.operation.type";
pub const MESSAGING_ROCKETMQ_CLIENT_GROUP: &str = "messaging.rocketmq.client_group";
pub const MESSAGING_ROCKETMQ_MESSAGE_DELAY_TIME_LEVEL: &str =
    "messaging.rocketmq.message.delay_time_level";
pub const MESSAGING_ROCKETMQ_MESSAGE_DELIVERY_TIMESTAMP: &str =
    "messaging.rocketmq.message.delivery_timestamp";
pub const MESSAGING_ROCKETMQ_MESSAGE_GROUP: &str = "messaging.rocketmq.message.group";
pub const MESSAGING_ROCKETMQ_MESSAGE_KEYS: &str = "messaging.rocketmq.message.keys";
pub const MESSAGING_ROCKETMQ_MESSAGE_TAG: &str = "messaging.rocketmq.message.tag";
pub const MESSAGING_ROCKETMQ_MESSAGE_TYPE: &str = "messaging.rocketmq.message.type";
pub const MESSAGING_ROCKETMQ_NAMESPACE: &str = "messaging.rocketmq.namespace";
pub const MESSAGING_SYSTEM: &str = "messaging.system";

// RPC, for RocketMQ 5 gRPC calls.
pub const RPC_METHOD: &str = "rpc.method";
pub const RPC_SERVICE: &str = "rpc.service";
pub const RPC_SYSTEM: &str = "rpc.system";

// The server a client reached.
pub const SERVER_ADDRESS: &str = "server.address";
pub const SERVER_PORT: &str = "server.port";

// The client a broker served.
pub const CLIENT_ADDRESS: &str = "client.address";
pub const CLIENT_PORT: &str = "client.port";

// Errors.
pub const ERROR_TYPE: &str = "error.type";

// mqtrace's own.
pub const MQTRACE_BORN_TO_RECEIVE_MS: &str = "mqtrace.born_to_receive_ms";
pub const MQTRACE_CAPTURE_FILE: &str = "mqtrace.capture.file";
pub const MQTRACE_CLIENT_LANGUAGE: &str = "mqtrace.client.language";
pub const MQTRACE_CLIENT_VERSION: &str = "mqtrace.client.version";
pub const MQTRACE_OBSERVER: &str = "mqtrace.observer";
/// How the agent saw the connection's bytes: `plain`, or `tls-uprobe` (the plaintext from
/// probes on the process's TLS library).
pub const MQTRACE_CAPTURE: &str = "mqtrace.capture";
pub const MQTRACE_OFFSET_MSG_ID: &str = "mqtrace.offset_msg_id";
pub const MQTRACE_ORIGIN_MESSAGE_ID: &str = "mqtrace.origin_message_id";
pub const MQTRACE_QUEUE_OFFSET: &str = "mqtrace.queue_offset";
pub const MQTRACE_QUEUE_TIME_MS: &str = "mqtrace.queue_time_ms";
pub const MQTRACE_RECONSUME_TIMES: &str = "mqtrace.reconsume_times";
pub const MQTRACE_RESPONSE_UNSEEN: &str = "mqtrace.response.unseen";
pub const MQTRACE_SEND_ATTEMPT: &str = "mqtrace.send.attempt";
pub const MQTRACE_STORE_HOST: &str = "mqtrace.store_host";
pub const MQTRACE_STORE_TIMESTAMP_MS: &str = "mqtrace.store_timestamp_ms";

// Resource: the service.
pub const SERVICE_NAME: &str = "service.name";

// Resource: the process.
pub const PROCESS_EXECUTABLE_NAME: &str = "process.executable.name";
pub const PROCESS_PID: &str = "process.pid";

// Resource: the host.
pub const HOST_NAME: &str = "host.name";

// Resource: the container.
pub const CONTAINER_ID: &str = "container.id";

// Resource: Kubernetes.
pub const K8S_CONTAINER_NAME: &str = "k8s.container.name";
pub const K8S_DEPLOYMENT_NAME: &str = "k8s.deployment.name";
pub const K8S_NAMESPACE_NAME: &str = "k8s.namespace.name";
pub const K8S_NODE_NAME: &str = "k8s.node.name";
pub const K8S_POD_NAME: &str = "k8s.pod.name";
pub const K8S_POD_UID: &str = "k8s.pod.uid";
pub const K8S_REPLICASET_NAME: &str = "k8s.replicaset.name";
pub const K8S_STATEFULSET_NAME: &str = "k8s.statefulset.name";
