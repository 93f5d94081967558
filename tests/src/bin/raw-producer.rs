//! raw-producer: a RocketMQ producer that sets no UNIQ_KEY, as ali-ons and some older clients
//! do. It writes SEND_MESSAGE (10) frames encoded from the wire reference straight to a broker
//! and reads the answers, one request at a time.
//!
//! usage: raw-producer [--root DIR] [--hold] BROKER TOPIC COUNT [KEY_BYTES]
//!   --root DIR: chroot into DIR first, as a container's process lives in its own root
//!   (BROKER is then an IP address: nothing is resolved inside).
//!   --hold: after the last message, run on until stdin closes, as a long-lived service does.
//!   sends COUNT messages (keys "raw-<i>", padded to KEY_BYTES with "k", tag "TagRaw", queue 0)
//!   and prints one
//!   JSON line per message: {"key","offset_msg_id","transaction_id","queue_id","queue_offset"}
//!   (transaction_id: the UNIQ_KEY the broker assigned, where it returns one).

use std::{
    io::{Read, Write},
    net::TcpStream,
    time::{Duration, SystemTime, UNIX_EPOCH},
};

use anyhow::{Context, bail};
use mqtrace_protocol::{
    RequestCode,
    encode::{properties, request_frame},
};
use serde_json::{Value, json};

/// One frame's JSON header (the body is read and dropped).
fn read_header(stream: &mut TcpStream) -> anyhow::Result<Value> {
    let mut head = [0u8; 8];
    stream.read_exact(&mut head)?;
    let length = u32::from_be_bytes(head[..4].try_into()?) as usize;
    let header_len = (u32::from_be_bytes(head[4..].try_into()?) & 0x00FF_FFFF) as usize;
    if length > 16 << 20 || header_len + 4 > length {
        bail!("frame of {length} bytes with a {header_len}-byte header");
    }
    let mut rest = vec![0u8; length - 4];
    stream.read_exact(&mut rest)?;
    Ok(serde_json::from_slice(&rest[..header_len])?)
}

fn main() -> anyhow::Result<()> {
    let mut args: Vec<String> = std::env::args().collect();
    if args.get(1).map(String::as_str) == Some("--root") && args.len() > 2 {
        let root = args.remove(2);
        args.remove(1);
        std::os::unix::fs::chroot(&root).with_context(|| format!("chroot {root}"))?;
        std::env::set_current_dir("/")?;
    }
    let hold = args.get(1).map(String::as_str) == Some("--hold");
    if hold {
        args.remove(1);
    }
    let (broker, topic, count, key_bytes) = match args.as_slice() {
        [_, broker, topic, count] => (broker, topic, count, 0),
        [_, broker, topic, count, key_bytes] => (broker, topic, count, key_bytes.parse()?),
        _ => bail!("usage: raw-producer [--root DIR] [--hold] BROKER TOPIC COUNT [KEY_BYTES]"),
    };
    let count: usize = count.parse()?;
    let mut stream = TcpStream::connect(broker).with_context(|| format!("connecting {broker}"))?;
    stream.set_read_timeout(Some(Duration::from_secs(10)))?;
    for i in 0..count {
        let mut key = format!("raw-{i}");
        if key.len() < key_bytes {
            key.push('-');
            key.extend(std::iter::repeat_n('k', key_bytes - key.len()));
        }
        let born = SystemTime::now()
            .duration_since(UNIX_EPOCH)?
            .as_millis()
            .to_string();
        let props = properties(&[("KEYS", &key), ("TAGS", "TagRaw"), ("WAIT", "true")]);
        let opaque = i as i32 + 1;
        let frame = request_frame(
            RequestCode::SendMessage,
            opaque,
            &[
                ("producerGroup", "raw_producer"),
                ("topic", topic),
                ("defaultTopic", "TBW102"),
                ("defaultTopicQueueNums", "4"),
                ("queueId", "0"),
                ("sysFlag", "0"),
                ("bornTimestamp", &born),
                ("flag", "0"),
                ("properties", &props),
                ("reconsumeTimes", "0"),
                ("unitMode", "false"),
                ("batch", "false"),
            ],
            format!("raw message {i}").as_bytes(),
        );
        stream.write_all(&frame)?;
        let header = read_header(&mut stream)?;
        if header["opaque"] != opaque || header["code"] != 0 {
            bail!("message {i}: the broker answered {header}");
        }
        let ext = &header["extFields"];
        println!(
            "{}",
            json!({
                "key": key,
                "offset_msg_id": ext["msgId"],
                "transaction_id": ext["transactionId"],
                "queue_id": ext["queueId"],
                "queue_offset": ext["queueOffset"],
            })
        );
    }
    if hold {
        std::io::copy(&mut std::io::stdin(), &mut std::io::sink())?;
    }
    Ok(())
}
