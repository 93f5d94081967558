//! The frame head and the two header serializations (`RemotingCommand.java`,
//! `RocketMQSerializable.java`).

use super::{DecodeError, codes::language_name, fields::Fields};

/// Bytes before the header: total length and serialize type with header length.
pub const HEAD_LEN: usize = 8;
/// Headers longer than this are taken as garbage: real ones are a few KiB at most.
pub const MAX_HEADER_LEN: u32 = 1 << 20;

#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum SerializeType {
    Json,
    Rocketmq,
}

/// The first eight bytes of every frame.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FrameHead {
    /// Bytes after the length field: 4 + header + body.
    pub length: u32,
    pub serialize_type: SerializeType,
    pub header_len: u32,
}

impl FrameHead {
    /// Parses and checks a head; `max_frame` bounds the claimed length.
    pub fn parse(bytes: &[u8; HEAD_LEN], max_frame: u32) -> Result<Self, DecodeError> {
        let length = u32::from_be_bytes(bytes[0..4].try_into().unwrap());
        let mark = u32::from_be_bytes(bytes[4..8].try_into().unwrap());
        let serialize_type = match mark >> 24 {
            0 => SerializeType::Json,
            1 => SerializeType::Rocketmq,
            other => return Err(DecodeError::SerializeType(other as u8)),
        };
        let header_len = mark & 0x00FF_FFFF;
        if length > max_frame {
            return Err(DecodeError::FrameTooLong {
                length,
                max: max_frame,
            });
        }
        if header_len == 0
            || header_len > MAX_HEADER_LEN
            || u64::from(header_len) + 4 > u64::from(length)
        {
            return Err(DecodeError::HeaderLength { header_len, length });
        }
        Ok(Self {
            length,
            serialize_type,
            header_len,
        })
    }

    pub fn body_len(&self) -> u64 {
        u64::from(self.length) - 4 - u64::from(self.header_len)
    }
}

/// A decoded header, whichever way it was serialized.
#[derive(Clone, Debug, Default, PartialEq, Eq, serde::Serialize)]
pub struct Header {
    pub code: i32,
    pub language: String,
    pub version: i32,
    pub opaque: i32,
    pub flag: i32,
    pub remark: Option<String>,
    pub ext_fields: Fields,
}

pub const FLAG_RESPONSE: i32 = 1;
const FLAG_ONEWAY: i32 = 2;

impl Header {
    pub fn is_response(&self) -> bool {
        self.flag & FLAG_RESPONSE != 0
    }

    pub fn is_oneway(&self) -> bool {
        self.flag & FLAG_ONEWAY != 0
    }

    pub fn ext(&self, key: &str) -> Option<&str> {
        self.ext_fields.get(key)
    }

    pub fn parse(serialize_type: SerializeType, bytes: &[u8]) -> Result<Self, DecodeError> {
        match serialize_type {
            SerializeType::Json => parse_json(bytes),
            SerializeType::Rocketmq => parse_binary(bytes),
        }
    }
}

/// A JSON scalar as RocketMQ's headers carry it: a number or a string; anything else (a bool,
/// a float, a nested value) is tolerated and kept as its JSON text.
enum Scalar {
    Int(i64),
    Text(String),
}

impl Scalar {
    fn int(&self) -> i32 {
        match self {
            Scalar::Int(n) => *n as i32,
            Scalar::Text(s) => s.parse().unwrap_or(0),
        }
    }

    fn into_string(self) -> String {
        match self {
            Scalar::Int(n) => n.to_string(),
            Scalar::Text(s) => s,
        }
    }
}

struct ScalarVisitor;

impl<'de> serde::de::Visitor<'de> for ScalarVisitor {
    type Value = Scalar;

    fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
        f.write_str("a JSON value")
    }
    fn visit_i64<E>(self, v: i64) -> Result<Scalar, E> {
        Ok(Scalar::Int(v))
    }
    fn visit_u64<E>(self, v: u64) -> Result<Scalar, E> {
        Ok(i64::try_from(v).map_or_else(|_| Scalar::Text(v.to_string()), Scalar::Int))
    }
    fn visit_f64<E>(self, v: f64) -> Result<Scalar, E> {
        Ok(Scalar::Text(serde_json::Value::from(v).to_string()))
    }
    fn visit_bool<E>(self, v: bool) -> Result<Scalar, E> {
        Ok(Scalar::Text(v.to_string()))
    }
    fn visit_str<E>(self, v: &str) -> Result<Scalar, E> {
        Ok(Scalar::Text(v.to_string()))
    }
    fn visit_string<E>(self, v: String) -> Result<Scalar, E> {
        Ok(Scalar::Text(v))
    }
    fn visit_seq<A: serde::de::SeqAccess<'de>>(self, seq: A) -> Result<Scalar, A::Error> {
        let value: serde_json::Value =
            serde::Deserialize::deserialize(serde::de::value::SeqAccessDeserializer::new(seq))?;
        Ok(Scalar::Text(value.to_string()))
    }
    fn visit_map<A: serde::de::MapAccess<'de>>(self, map: A) -> Result<Scalar, A::Error> {
        let value: serde_json::Value =
            serde::Deserialize::deserialize(serde::de::value::MapAccessDeserializer::new(map))?;
        Ok(Scalar::Text(value.to_string()))
    }
}

impl<'de> serde::Deserialize<'de> for Scalar {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        d.deserialize_any(ScalarVisitor)
    }
}

/// A key or value of `extFields`, appended to the fields' text as it is read (no string of
/// its own); false for a null value.
struct AppendTo<'a>(&'a mut String);

impl<'de> serde::de::DeserializeSeed<'de> for AppendTo<'_> {
    type Value = bool;
    fn deserialize<D: serde::Deserializer<'de>>(self, d: D) -> Result<bool, D::Error> {
        d.deserialize_any(self)
    }
}

impl<'de> serde::de::Visitor<'de> for AppendTo<'_> {
    type Value = bool;
    fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
        f.write_str("a JSON value")
    }
    fn visit_str<E>(self, v: &str) -> Result<bool, E> {
        self.0.push_str(v);
        Ok(true)
    }
    fn visit_i64<E>(self, v: i64) -> Result<bool, E> {
        use std::fmt::Write;
        let _ = write!(self.0, "{v}");
        Ok(true)
    }
    fn visit_u64<E>(self, v: u64) -> Result<bool, E> {
        use std::fmt::Write;
        let _ = write!(self.0, "{v}");
        Ok(true)
    }
    fn visit_f64<E>(self, v: f64) -> Result<bool, E> {
        self.0.push_str(&serde_json::Value::from(v).to_string());
        Ok(true)
    }
    fn visit_bool<E>(self, v: bool) -> Result<bool, E> {
        self.0.push_str(if v { "true" } else { "false" });
        Ok(true)
    }
    fn visit_unit<E>(self) -> Result<bool, E> {
        Ok(false)
    }
    fn visit_none<E>(self) -> Result<bool, E> {
        Ok(false)
    }
    // Nested values are kept as their JSON text, as before.
    fn visit_seq<A: serde::de::SeqAccess<'de>>(self, seq: A) -> Result<bool, A::Error> {
        let value: serde_json::Value =
            serde::Deserialize::deserialize(serde::de::value::SeqAccessDeserializer::new(seq))?;
        self.0.push_str(&value.to_string());
        Ok(true)
    }
    fn visit_map<A: serde::de::MapAccess<'de>>(self, map: A) -> Result<bool, A::Error> {
        let value: serde_json::Value =
            serde::Deserialize::deserialize(serde::de::value::MapAccessDeserializer::new(map))?;
        self.0.push_str(&value.to_string());
        Ok(true)
    }
}

/// `extFields`, straight into the header's fields: null values are absent.
impl<'de> serde::Deserialize<'de> for Fields {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct Object;
        impl<'de> serde::de::Visitor<'de> for Object {
            type Value = Fields;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("an object")
            }
            fn visit_map<A: serde::de::MapAccess<'de>>(
                self,
                mut map: A,
            ) -> Result<Fields, A::Error> {
                // Sized for a send's fields (its properties are most of them): growing the
                // text field by field was 3 % of the decoder's time.
                let mut fields = Fields::with_capacity(512, 16);
                loop {
                    let start = fields.text.len() as u32;
                    if map.next_key_seed(AppendTo(&mut fields.text))?.is_none() {
                        return Ok(fields);
                    }
                    let key_end = fields.text.len() as u32;
                    if map.next_value_seed(AppendTo(&mut fields.text))? {
                        let value = key_end..fields.text.len() as u32;
                        fields.fields.push((start..key_end, value));
                    } else {
                        fields.text.truncate(start as usize);
                    }
                }
            }
            // Anything but an object carries no fields.
            fn visit_unit<E>(self) -> Result<Fields, E> {
                Ok(Fields::default())
            }
        }
        d.deserialize_any(Object)
    }
}

/// The JSON header's fields, read straight from the bytes (no intermediate value tree: this
/// is the decoder's hottest path). Keys in any order, unknown keys ignored, nulls tolerated.
#[derive(serde::Deserialize)]
struct JsonHeader {
    code: Option<Scalar>,
    language: Option<Scalar>,
    version: Option<Scalar>,
    opaque: Option<Scalar>,
    flag: Option<Scalar>,
    remark: Option<Scalar>,
    #[serde(rename = "extFields")]
    ext_fields: Option<Fields>,
}

fn parse_json(bytes: &[u8]) -> Result<Header, DecodeError> {
    let header: JsonHeader = serde_json::from_slice(bytes).map_err(|_| DecodeError::JsonHeader)?;
    let int = |s: &Option<Scalar>| s.as_ref().map_or(0, Scalar::int);
    Ok(Header {
        code: header.code.as_ref().ok_or(DecodeError::JsonHeader)?.int(),
        language: match header.language {
            Some(Scalar::Int(n)) => language_name(u8::try_from(n).unwrap_or(255)).to_string(),
            Some(text) => text.into_string(),
            None => String::new(),
        },
        version: int(&header.version),
        opaque: int(&header.opaque),
        flag: int(&header.flag),
        remark: header.remark.map(Scalar::into_string),
        ext_fields: header.ext_fields.unwrap_or_default(),
    })
}

/// A bounds-checked big-endian reader.
pub struct Reader<'a> {
    bytes: &'a [u8],
    at: usize,
}

impl<'a> Reader<'a> {
    pub fn new(bytes: &'a [u8]) -> Self {
        Self { bytes, at: 0 }
    }

    pub fn take(&mut self, n: usize) -> Result<&'a [u8], DecodeError> {
        let end = self
            .at
            .checked_add(n)
            .filter(|&e| e <= self.bytes.len())
            .ok_or(DecodeError::Truncated)?;
        let out = &self.bytes[self.at..end];
        self.at = end;
        Ok(out)
    }

    pub fn u8(&mut self) -> Result<u8, DecodeError> {
        Ok(self.take(1)?[0])
    }
    pub fn i16(&mut self) -> Result<i16, DecodeError> {
        Ok(i16::from_be_bytes(self.take(2)?.try_into().unwrap()))
    }
    pub fn i32(&mut self) -> Result<i32, DecodeError> {
        Ok(i32::from_be_bytes(self.take(4)?.try_into().unwrap()))
    }
    pub fn i64(&mut self) -> Result<i64, DecodeError> {
        Ok(i64::from_be_bytes(self.take(8)?.try_into().unwrap()))
    }
    pub fn remaining(&self) -> usize {
        self.bytes.len() - self.at
    }
    /// A length-prefixed string, borrowed unless it needs repair; negative or oversized
    /// lengths are errors.
    fn text(&mut self, len: i64) -> Result<std::borrow::Cow<'a, str>, DecodeError> {
        let len = usize::try_from(len).map_err(|_| DecodeError::Truncated)?;
        Ok(String::from_utf8_lossy(self.take(len)?))
    }
}

fn parse_binary(bytes: &[u8]) -> Result<Header, DecodeError> {
    let mut r = Reader::new(bytes);
    let code = i32::from(r.i16()?);
    let language = r.u8()?;
    if language > 13 {
        return Err(DecodeError::BinaryHeader);
    }
    let version = i32::from(r.i16()?);
    let opaque = r.i32()?;
    let flag = r.i32()?;
    let remark_len = r.i32()?;
    let remark = if remark_len > 0 {
        Some(r.text(remark_len.into())?.into_owned())
    } else {
        None
    };
    let ext_len = r.i32()?;
    let ext_len = usize::try_from(ext_len).map_err(|_| DecodeError::BinaryHeader)?;
    let mut ext = Reader::new(r.take(ext_len)?);
    let mut ext_fields = Fields::default();
    while ext.remaining() > 0 {
        let key_len = ext.i16()?;
        let key = ext.text(key_len.into())?;
        let value_len = ext.i32()?;
        let value = ext.text(value_len.into())?;
        ext_fields.insert(&key, &value);
    }
    if r.remaining() != 0 {
        return Err(DecodeError::BinaryHeader);
    }
    Ok(Header {
        code,
        language: language_name(language).to_string(),
        version,
        opaque,
        flag,
        remark,
        ext_fields,
    })
}
