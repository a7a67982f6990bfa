//! Snapshot payloads: a point-in-time export of the whole MVCC tree, written as a stream of
//! framed records while the state machine goes on applying, and the import that replaces a
//! member's tree with one.
//!
//! The export reflects one revision `R` (the last applied when it starts) without holding
//! the state lock past a copy of the few mutable records (metadata and the lease table):
//! - history (`h`) at or below `R` never changes while the export holds the history pin
//!   (compaction and import take it exclusively, and only they delete history);
//! - a current pair (`c`) whose `mod_revision` is at most `R` is the pair at `R`;
//! - a key changed after `R` has its pair at `R` as the `prev_kv` of its first later event
//!   (history keeps `prev_kv`), or had none;
//! - lease attachments (`k`) follow from the pairs at `R`.
//!
//! A pair can come out twice (seen current, then changed before the history scan); both
//! copies are the same bytes, and the import's batch keeps one.
//!
//! Payload format 2: the byte `2`, then records `[u32 key length][key][u32 value
//! length][value]` (big-endian), then `u32::MAX`. Format 1 (bincode of every record in one
//! list) is still read, so a snapshot left by an older release imports.
//!
//! Owns the payload format; what the records mean is `keys`' and `apply`'s.

use std::collections::HashSet;
use std::io::Write;

use super::{keys, MvccError, MvccStore};
use crate::codec;
use crate::types::{Event, KeyValue, LogId, StoredMembership};

const FORMAT_STREAM: u8 = 2;
const FORMAT_LIST: u32 = 1;
const END: u32 = u32::MAX;

/// One record of the tree: key and value.
type Record = (Vec<u8>, Vec<u8>);

/// The format-1 payload.
#[derive(serde::Deserialize)]
struct RecordList {
    format: u32,
    records: Vec<Record>,
}

/// What an export reflects, and how big it came out.
pub struct Exported {
    pub last_applied: Option<LogId>,
    pub membership: StoredMembership,
    /// Payload bytes written.
    pub bytes: u64,
    /// The revision the payload holds.
    pub revision: i64,
}

fn io(e: std::io::Error) -> MvccError {
    MvccError::Storage(format!("writing a snapshot: {e}"))
}

/// Frames records onto a writer, counting bytes.
struct RecordWriter<W: Write> {
    out: W,
    bytes: u64,
}

impl<W: Write> RecordWriter<W> {
    fn new(mut out: W) -> Result<Self, MvccError> {
        out.write_all(&[FORMAT_STREAM]).map_err(io)?;
        Ok(RecordWriter { out, bytes: 1 })
    }

    fn record(&mut self, key: &[u8], value: &[u8]) -> Result<(), MvccError> {
        for part in [key, value] {
            let len = u32::try_from(part.len())
                .ok()
                .filter(|l| *l != END)
                .ok_or_else(|| MvccError::Corrupt(format!("a record of {} bytes", part.len())))?;
            self.out.write_all(&len.to_be_bytes()).map_err(io)?;
            self.out.write_all(part).map_err(io)?;
            self.bytes += 4 + part.len() as u64;
        }
        Ok(())
    }

    /// A pair at the export's revision, and its lease attachment.
    fn pair(&mut self, kv: &KeyValue, encoded: &[u8]) -> Result<(), MvccError> {
        self.record(&keys::cur(&kv.key), encoded)?;
        if kv.lease != 0 {
            self.record(&keys::lease_key(kv.lease, &kv.key), &[])?;
        }
        Ok(())
    }

    fn finish(mut self) -> Result<u64, MvccError> {
        self.out.write_all(&END.to_be_bytes()).map_err(io)?;
        self.out.flush().map_err(io)?;
        Ok(self.bytes + 4)
    }
}

/// Reads a payload's records, either format.
pub(super) fn records(data: &[u8]) -> Result<Vec<Record>, MvccError> {
    match data.first() {
        Some(&FORMAT_STREAM) => parse_stream(&data[1..]),
        Some(_) => {
            let list: RecordList = codec::decode(data)?;
            if list.format != FORMAT_LIST {
                return Err(MvccError::Corrupt(format!(
                    "snapshot format {} is not supported (expected {FORMAT_LIST} or {FORMAT_STREAM})",
                    list.format
                )));
            }
            Ok(list.records)
        }
        None => Err(MvccError::Corrupt("an empty snapshot payload".into())),
    }
}

fn parse_stream(mut rest: &[u8]) -> Result<Vec<Record>, MvccError> {
    fn take<'a>(rest: &mut &'a [u8], n: usize) -> Result<&'a [u8], MvccError> {
        if rest.len() < n {
            return Err(MvccError::Corrupt("a snapshot payload ends early".into()));
        }
        let (head, tail) = rest.split_at(n);
        *rest = tail;
        Ok(head)
    }
    fn len(rest: &mut &[u8]) -> Result<u32, MvccError> {
        let b = take(rest, 4)?;
        Ok(u32::from_be_bytes([b[0], b[1], b[2], b[3]]))
    }
    let mut out = Vec::new();
    loop {
        let klen = len(&mut rest)?;
        if klen == END {
            if !rest.is_empty() {
                return Err(MvccError::Corrupt(
                    "bytes after a snapshot payload's end".into(),
                ));
            }
            return Ok(out);
        }
        let key = take(&mut rest, klen as usize)?.to_vec();
        let vlen = len(&mut rest)?;
        let value = take(&mut rest, vlen as usize)?.to_vec();
        out.push((key, value));
    }
}

impl MvccStore {
    /// Writes a point-in-time copy of the whole state onto `out` (see the module doc)
    /// without blocking `apply_batch`, except a compaction, which waits for it to finish.
    /// `last_applied` and membership travel in the snapshot's metadata, not the payload.
    pub fn export_to<W: Write>(&self, out: W) -> Result<Exported, MvccError> {
        let _pin = self
            .inner
            .history_pin
            .read()
            .unwrap_or_else(|p| p.into_inner());
        let tree = &self.inner.tree;
        let (last_applied, membership, revision, fixed) = {
            let st = self.read_state();
            let mut fixed = Vec::new();
            for prefix in [keys::META, keys::LEASE] {
                for item in tree.scan_prefix([prefix]) {
                    let (k, v) = item?;
                    if k.as_ref() != keys::META_APPLIED && k.as_ref() != keys::META_MEMBERSHIP {
                        fixed.push((k, v));
                    }
                }
            }
            (
                st.last_applied,
                st.membership.clone(),
                self.current_revision(),
                fixed,
            )
        };
        let mut w = RecordWriter::new(out)?;
        for (k, v) in &fixed {
            w.record(k, v)?;
        }
        drop(fixed);
        let after = keys::hist(revision.saturating_add(1), 0);
        for item in tree.range(keys::hist(0, 0)..after) {
            let (k, v) = item?;
            w.record(&k, &v)?;
        }
        for item in tree.scan_prefix([keys::CUR]) {
            let (_, v) = item?;
            let kv: KeyValue = codec::decode(&v)?;
            if kv.mod_revision <= revision {
                w.pair(&kv, &v)?;
            }
        }
        // Every change the scan above saw is at or below this revision.
        let seen_up_to = self.current_revision();
        let mut changed = HashSet::new();
        for item in tree.range(after..keys::hist(seen_up_to.saturating_add(1), 0)) {
            let (_, v) = item?;
            let event: Event = codec::decode(&v)?;
            if changed.insert(event.kv.key) {
                if let Some(prev) = event.prev_kv {
                    w.pair(&prev, &codec::encode(&prev)?)?;
                }
            }
        }
        let bytes = w.finish()?;
        Ok(Exported {
            last_applied,
            membership,
            bytes,
            revision,
        })
    }

    /// Replaces the whole state with a snapshot payload's (one atomic write). Returns the
    /// new current revision.
    pub fn import(
        &self,
        data: &[u8],
        last_applied: Option<LogId>,
        membership: &StoredMembership,
    ) -> Result<i64, MvccError> {
        let records = records(data)?;
        let _pin = self
            .inner
            .history_pin
            .write()
            .unwrap_or_else(|p| p.into_inner());
        let mut st = self.write_state();
        let tree = &self.inner.tree;
        let mut batch = sled::Batch::default();
        for item in tree.iter().keys() {
            batch.remove(item?);
        }
        for (k, v) in records {
            batch.insert(k, v);
        }
        batch.insert(keys::META_APPLIED, codec::encode(&last_applied)?);
        batch.insert(keys::META_MEMBERSHIP, codec::encode(membership)?);
        tree.apply_batch(batch)?;
        self.load(&mut st)?;
        Ok(self.current_revision())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_stream_round_trips_and_a_cut_one_is_refused() {
        let mut buf = Vec::new();
        let mut w = RecordWriter::new(&mut buf).expect("writer");
        w.record(b"ca", b"1").expect("record");
        w.record(b"k", b"").expect("record");
        let n = w.finish().expect("finish");
        assert_eq!(n, buf.len() as u64);
        assert_eq!(
            records(&buf).expect("parse"),
            vec![(b"ca".to_vec(), b"1".to_vec()), (b"k".to_vec(), Vec::new())]
        );
        let cut = &buf[..buf.len() - 2];
        assert!(records(cut).is_err());
        assert!(records(&[]).is_err());
    }
}
