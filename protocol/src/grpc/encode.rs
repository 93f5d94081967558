//! Conversations of RocketMQ 5 gRPC as a client and a server write them, for tests and
//! benchmarks: HPACK (loona-hpack's encoder indexes every literal, as real peers' do), HTTP/2
//! frames, gRPC length prefixes, prost-encoded messages.

use std::collections::HashMap;

use super::{PREFACE, http2, proto as v2};

/// Both directions of one connection, written frame by frame.
pub struct Conversation {
    pub client: Vec<u8>,
    pub server: Vec<u8>,
    client_hpack: loona_hpack::Encoder<'static>,
    server_hpack: loona_hpack::Encoder<'static>,
}

/// One HTTP/2 frame.
pub fn frame(out: &mut Vec<u8>, kind: u8, flags: u8, stream: u32, payload: &[u8]) {
    out.extend_from_slice(&(payload.len() as u32).to_be_bytes()[1..]);
    out.push(kind);
    out.push(flags);
    out.extend_from_slice(&stream.to_be_bytes());
    out.extend_from_slice(payload);
}

/// One gRPC message: uncompressed, length-prefixed.
pub fn grpc(message: &impl prost::Message) -> Vec<u8> {
    let body = message.encode_to_vec();
    let mut out = vec![0];
    out.extend_from_slice(&(body.len() as u32).to_be_bytes());
    out.extend_from_slice(&body);
    out
}

impl Default for Conversation {
    fn default() -> Self {
        Self::new()
    }
}

impl Conversation {
    /// Preface and settings, both ways.
    pub fn new() -> Self {
        let mut c = Self {
            client: PREFACE.to_vec(),
            server: Vec::new(),
            client_hpack: loona_hpack::Encoder::new(),
            server_hpack: loona_hpack::Encoder::new(),
        };
        frame(
            &mut c.client,
            http2::SETTINGS,
            0,
            0,
            &[0, 4, 0, 0, 0xff, 0xff],
        );
        frame(&mut c.server, http2::SETTINGS, 0, 0, &[]);
        frame(&mut c.client, http2::SETTINGS, 1, 0, &[]);
        c
    }

    pub fn request(&mut self, stream: u32, method: &str, message: &impl prost::Message) {
        let path = format!("/apache.rocketmq.v2.MessagingService/{method}");
        self.request_to(stream, &path, message);
    }

    pub fn request_to(&mut self, stream: u32, path: &str, message: &impl prost::Message) {
        let headers: [(&[u8], &[u8]); 8] = [
            (b":method", b"POST"),
            (b":scheme", b"http"),
            (b":path", path.as_bytes()),
            (b":authority", b"127.0.0.1:8081"),
            (b"content-type", b"application/grpc"),
            (b"x-mq-client-id", b"host@1234#5678"),
            (b"x-mq-language", b"RUST"),
            (b"x-mq-client-version", b"5.0.0"),
        ];
        let block = self.client_hpack.encode(headers);
        frame(
            &mut self.client,
            http2::HEADERS,
            http2::END_HEADERS,
            stream,
            &block,
        );
        frame(
            &mut self.client,
            http2::DATA,
            http2::END_STREAM,
            stream,
            &grpc(message),
        );
    }

    /// Response headers, one DATA frame per message, trailers.
    pub fn response(&mut self, stream: u32, messages: &[Vec<u8>], grpc_status: &str) {
        let block = self.server_hpack.encode([
            (&b":status"[..], &b"200"[..]),
            (b"content-type", b"application/grpc"),
        ]);
        frame(
            &mut self.server,
            http2::HEADERS,
            http2::END_HEADERS,
            stream,
            &block,
        );
        for message in messages {
            frame(&mut self.server, http2::DATA, 0, stream, message);
        }
        let trailers = self
            .server_hpack
            .encode([(&b"grpc-status"[..], grpc_status.as_bytes())]);
        frame(
            &mut self.server,
            http2::HEADERS,
            http2::END_HEADERS | http2::END_STREAM,
            stream,
            &trailers,
        );
    }
}

pub fn resource(name: &str) -> Option<v2::Resource> {
    Some(v2::Resource {
        resource_namespace: String::new(),
        name: name.into(),
    })
}

pub fn ok() -> Option<v2::Status> {
    Some(v2::Status {
        code: v2::Code::Ok as i32,
        message: "OK".into(),
    })
}

pub fn message(id: &str, key: &str, attempt: Option<i32>) -> v2::Message {
    v2::Message {
        topic: resource("orders"),
        user_properties: HashMap::from([("tenant".to_string(), "blue".to_string())]),
        system_properties: Some(v2::SystemProperties {
            tag: Some("TagA".into()),
            keys: vec![key.into()],
            message_id: id.into(),
            born_timestamp: Some(prost_types::Timestamp {
                seconds: 1_700_000_000,
                nanos: 5_000_000,
            }),
            queue_id: attempt.map(|_| 2),
            queue_offset: attempt.map(|_| 41),
            delivery_attempt: attempt,
            ..Default::default()
        }),
        body: bytes::Bytes::from_static(b"hello"),
    }
}

pub fn send_request(ids: &[&str]) -> v2::SendMessageRequest {
    v2::SendMessageRequest {
        messages: ids
            .iter()
            .map(|id| message(id, &format!("key-{id}"), None))
            .collect(),
    }
}

pub fn send_response(offset: i64) -> Vec<u8> {
    grpc(&v2::SendMessageResponse {
        status: ok(),
        entries: vec![v2::SendResultEntry {
            status: ok(),
            message_id: "ID1".into(),
            transaction_id: String::new(),
            offset,
        }],
    })
}

pub fn receive_request() -> v2::ReceiveMessageRequest {
    v2::ReceiveMessageRequest {
        group: resource("workers"),
        message_queue: Some(v2::MessageQueue {
            topic: resource("orders"),
            id: 2,
            ..Default::default()
        }),
        batch_size: 32,
        invisible_duration: Some(prost_types::Duration {
            seconds: 15,
            nanos: 0,
        }),
        long_polling_timeout: Some(prost_types::Duration {
            seconds: 20,
            nanos: 0,
        }),
        ..Default::default()
    }
}

pub fn received(id: &str, attempt: i32) -> Vec<u8> {
    grpc(&v2::ReceiveMessageResponse {
        content: Some(v2::receive_message_response::Content::Message(message(
            id,
            &format!("key-{id}"),
            Some(attempt),
        ))),
    })
}

pub fn receive_status(code: v2::Code) -> Vec<u8> {
    grpc(&v2::ReceiveMessageResponse {
        content: Some(v2::receive_message_response::Content::Status(v2::Status {
            code: code as i32,
            message: String::new(),
        })),
    })
}
