//! Versioned, checksummed record envelopes.
//!
//! Every value hams writes to RocksDB is `[MAGIC][VERSION][crc32 LE][bincode body]`,
//! so a flipped bit or a value from another program is refused, never misread.

use serde::{de::DeserializeOwned, Serialize};

use crate::error::{Error, Result};

const MAGIC: u8 = 0xA5;
const VERSION: u8 = 1;
const HEADER: usize = 6;

/// Encodes `value` into a checksummed envelope.
pub fn encode<T: Serialize>(value: &T) -> Vec<u8> {
    let body = bincode::serialize(value).expect("bincode serialization of plain data cannot fail");
    let mut out = Vec::with_capacity(HEADER + body.len());
    out.push(MAGIC);
    out.push(VERSION);
    out.extend_from_slice(&crc32fast::hash(&body).to_le_bytes());
    out.extend_from_slice(&body);
    out
}

/// Decodes an envelope written by [`encode`], checking magic, version and checksum.
pub fn decode<T: DeserializeOwned>(cf: &'static str, key: &[u8], bytes: &[u8]) -> Result<T> {
    let corrupt = |reason: String| Error::Corrupt { cf, key: hex(key), reason };
    if bytes.len() < HEADER {
        return Err(corrupt(format!("record of {} bytes is shorter than its header", bytes.len())));
    }
    if bytes[0] != MAGIC {
        return Err(corrupt(format!("bad magic byte {:#04x}", bytes[0])));
    }
    if bytes[1] != VERSION {
        return Err(corrupt(format!("record version {} (this build reads {VERSION})", bytes[1])));
    }
    let stored = u32::from_le_bytes(bytes[2..6].try_into().expect("4 bytes"));
    let body = &bytes[HEADER..];
    let actual = crc32fast::hash(body);
    if stored != actual {
        return Err(corrupt(format!(
            "checksum mismatch (stored {stored:#010x}, computed {actual:#010x})"
        )));
    }
    untrusted(body).map_err(|e| corrupt(format!("undecodable body: {e}")))
}

/// Decodes bincode (as `bincode::serialize` writes it) from bytes that may be
/// anything: every length field is checked against the bytes actually there
/// before it is used, and trailing bytes are refused.
pub fn untrusted<T: DeserializeOwned>(bytes: &[u8]) -> bincode::Result<T> {
    use bincode::Options;
    bincode::DefaultOptions::new()
        .with_fixint_encoding()
        .with_limit(bytes.len() as u64)
        .deserialize(bytes)
}

/// Lower-case hex of a key, for error messages.
pub fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip() {
        let v = (7u64, "seven".to_string(), vec![1.5f32, -2.0]);
        let bytes = encode(&v);
        let back: (u64, String, Vec<f32>) = decode("t", b"k", &bytes).unwrap();
        assert_eq!(back, v);
    }

    #[test]
    fn every_single_bit_flip_is_detected() {
        let bytes = encode(&(1u32, 2u64, "payload"));
        for i in 0..bytes.len() * 8 {
            let mut b = bytes.clone();
            b[i / 8] ^= 1 << (i % 8);
            assert!(decode::<(u32, u64, String)>("t", b"k", &b).is_err(), "flip {i} undetected");
        }
    }

    #[test]
    fn short_and_foreign_values_are_refused() {
        assert!(decode::<u64>("t", b"k", &[]).is_err());
        let err = decode::<u64>("t", b"k", b"hello world").unwrap_err();
        assert!(err.to_string().contains("bad magic"), "{err}");
    }
}
