//! On-disk encoding of versions.
//!
//! Key: the pointer id with every `0x00` escaped as `0x00 0xFF`, then the terminator
//! `0x00 0x01`, then the version as 8 big-endian bytes. Keys therefore sort by pointer id
//! (byte order) and, within a pointer, by version, so one pointer's history is one range.
//!
//! Value: `flags` (bit 0: deleted), then the writer txn id and trace id each as a length
//! byte and its bytes, then the JSON text of the value (empty for a deletion).
//!
//! Intents (keyspace `intents`, the provisional versions of a txn spanning partitions): key
//! = the txn id reversed, `0x00`, the partition (4 bytes big-endian), then the pointer id;
//! value = the provisional version (8 bytes big-endian). Txn records (keyspace `txns`, on
//! the primary's partition): key = the txn id reversed, `0x00` and the partition; value = a
//! state byte (1: committed) and the commit version (8 bytes big-endian).

use std::sync::Arc;

use bytes::Bytes;

use crate::engine::VersionRec;

const TERMINATOR: [u8; 2] = [0x00, 0x01];
const FLAG_DELETED: u8 = 1;

/// The key prefix shared by every version of `ptr`.
pub fn pointer_prefix(ptr: &str) -> Vec<u8> {
    let mut out = Vec::with_capacity(ptr.len() + 10);
    for &b in ptr.as_bytes() {
        out.push(b);
        if b == 0 {
            out.push(0xFF);
        }
    }
    out.extend_from_slice(&TERMINATOR);
    out
}

/// The key of one version of `ptr`.
pub fn version_key(ptr: &str, version: u64) -> Vec<u8> {
    let mut k = pointer_prefix(ptr);
    k.extend_from_slice(&version.to_be_bytes());
    k
}

/// The txn id reversed, then a NUL (txn ids have none) and the partition: consecutive
/// txn ids differ in their last digits, so reversed they part at the first byte, and the
/// memtable's comparisons stay short under a stream of commits.
fn txn_partition(k: &mut Vec<u8>, txn: &str, partition: u32) {
    k.extend(txn.bytes().rev());
    k.push(0);
    k.extend_from_slice(&partition.to_be_bytes());
}

/// Splits what [`txn_partition`] wrote off the front of `key`.
fn split_txn_partition(key: &[u8]) -> Option<(String, u32, &[u8])> {
    let nul = key.iter().position(|b| *b == 0)?;
    let txn: String = std::str::from_utf8(&key[..nul]).ok()?.chars().rev().collect();
    let partition = u32::from_be_bytes(key.get(nul + 1..nul + 5)?.try_into().ok()?);
    Some((txn, partition, key.get(nul + 5..)?))
}

/// The key of `txn`'s intent on `ptr` in `partition`.
pub fn intent_key(partition: u32, txn: &str, ptr: &str) -> Vec<u8> {
    let mut k = Vec::with_capacity(6 + txn.len() + ptr.len());
    txn_partition(&mut k, txn, partition);
    k.extend_from_slice(ptr.as_bytes());
    k
}

/// Splits an intent key into its partition, txn id and pointer id.
pub fn decode_intent_key(key: &[u8]) -> Option<(u32, String, String)> {
    let (txn, partition, rest) = split_txn_partition(key)?;
    Some((partition, txn, std::str::from_utf8(rest).ok()?.to_string()))
}

/// The key of `txn`'s record in its primary's `partition`.
pub fn record_key(partition: u32, txn: &str) -> Vec<u8> {
    let mut k = Vec::with_capacity(5 + txn.len());
    txn_partition(&mut k, txn, partition);
    k
}

/// A committed record's value.
pub fn committed_record(commit_version: u64) -> Vec<u8> {
    let mut v = vec![1u8];
    v.extend_from_slice(&commit_version.to_be_bytes());
    v
}

/// The txn id and, if committed, the commit version of a record.
pub fn decode_record(key: &[u8], value: &[u8]) -> Option<(String, Option<u64>)> {
    let (txn, _, rest) = split_txn_partition(key)?;
    if !rest.is_empty() {
        return None;
    }
    let version = match value.first()? {
        1 => Some(u64::from_be_bytes(value.get(1..9)?.try_into().ok()?)),
        _ => None,
    };
    Some((txn, version))
}

/// Splits a key into its pointer id and version.
pub fn decode_key(key: &[u8]) -> Option<(String, u64)> {
    let mut ptr = Vec::with_capacity(key.len());
    let mut i = 0;
    while i < key.len() {
        if key[i] == 0 {
            match key.get(i + 1)? {
                0xFF => {
                    ptr.push(0);
                    i += 2;
                }
                0x01 => {
                    let v: [u8; 8] = key.get(i + 2..i + 10)?.try_into().ok()?;
                    if key.len() != i + 10 {
                        return None;
                    }
                    return Some((String::from_utf8(ptr).ok()?, u64::from_be_bytes(v)));
                }
                _ => return None,
            }
        } else {
            ptr.push(key[i]);
            i += 1;
        }
    }
    None
}

/// Encodes a version's value.
pub fn encode_value(txn: &str, trace_id: &str, value: Option<&[u8]>) -> Vec<u8> {
    let txn = &txn.as_bytes()[..txn.len().min(255)];
    let trace = &trace_id.as_bytes()[..trace_id.len().min(255)];
    let mut out = Vec::with_capacity(3 + txn.len() + trace.len() + value.map_or(0, <[u8]>::len));
    out.push(if value.is_none() { FLAG_DELETED } else { 0 });
    out.push(txn.len() as u8);
    out.extend_from_slice(txn);
    out.push(trace.len() as u8);
    out.extend_from_slice(trace);
    if let Some(v) = value {
        out.extend_from_slice(v);
    }
    out
}

/// Decodes a version's value.
pub fn decode_value(version: u64, raw: &[u8]) -> Option<VersionRec> {
    let flags = *raw.first()?;
    let tl = *raw.get(1)? as usize;
    let txn = std::str::from_utf8(raw.get(2..2 + tl)?).ok()?;
    let rl = *raw.get(2 + tl)? as usize;
    let trace = std::str::from_utf8(raw.get(3 + tl..3 + tl + rl)?).ok()?;
    let body = raw.get(3 + tl + rl..)?;
    Some(VersionRec {
        version,
        txn: Arc::from(txn),
        trace_id: Arc::from(trace),
        value: if flags & FLAG_DELETED != 0 { None } else { Some(Bytes::copy_from_slice(body)) },
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn intent_and_record_keys_round_trip() {
        let k = intent_key(7, "0000019ad5c3e001", "a\u{0}b/ü");
        assert_eq!(decode_intent_key(&k), Some((7, "0000019ad5c3e001".into(), "a\u{0}b/ü".into())));
        let r = record_key(3, "0000019ad5c3e001");
        assert_eq!(decode_record(&r, &committed_record(42)), Some(("0000019ad5c3e001".into(), Some(42))));
        assert_eq!(decode_record(&k, &committed_record(42)), None, "an intent key is not a record key");
        assert_ne!(intent_key(0, "0000019ad5c3e001", "p")[0], intent_key(0, "0000019ad5c3e002", "p")[0]);
    }

    proptest! {
        #[test]
        fn keys_round_trip_and_sort_by_pointer_then_version(
            a in "\\PC{0,12}", b in "\\PC{0,12}", va: u64, vb: u64
        ) {
            let ka = version_key(&a, va);
            prop_assert_eq!(decode_key(&ka), Some((a.clone(), va)));
            let kb = version_key(&b, vb);
            let by_key = ka.cmp(&kb);
            let by_fields = a.as_bytes().cmp(b.as_bytes()).then(va.cmp(&vb));
            prop_assert_eq!(by_key, by_fields);
        }
    }

    #[test]
    fn nul_bytes_in_ids_do_not_confuse_prefixes() {
        let k = version_key("a\0b", 7);
        assert_eq!(decode_key(&k), Some(("a\0b".to_string(), 7)));
        assert!(!k.starts_with(&pointer_prefix("a")));
    }

    #[test]
    fn values_round_trip() {
        let raw = encode_value("t1", "trace", Some(b"{\"a\":1}"));
        let rec = decode_value(9, &raw).unwrap();
        assert_eq!(rec.value.as_deref(), Some(&b"{\"a\":1}"[..]));
        assert_eq!(&*rec.txn, "t1");
        let del = decode_value(9, &encode_value("t1", "trace", None)).unwrap();
        assert!(del.value.is_none());
        assert!(decode_value(1, &[0, 9]).is_none());
    }
}
