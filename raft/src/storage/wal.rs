//! The Raft log as append-only segment files (`raft-log/<first index>.wal`), made durable
//! by fdatasync on a flusher thread that covers every append made since its last sync with
//! one call (group commit).
//!
//! A record is `[u32 length][u32 crc32 of the payload][payload]` (little-endian), the
//! payload one bincode-encoded [`Entry`]. An append writes its records with one `write`
//! (readers see them at once) and hands its completion to the flusher, which calls it once
//! the bytes are on disk. On open every segment is read back: a torn or corrupt record at
//! the end of the newest segment (a crash mid-write) is cut off; anywhere else it is an
//! error, never silently skipped.
//!
//! `truncate` cuts the newest entries (file length or whole segments, synced at once);
//! `purge` deletes whole segments behind the given index (entries it keeps below that
//! index are ignored on reading). Vote, committed and purge marks are the caller's.
//!
//! It owns the files and the positions of the entries; it must not know what an entry
//! means.

use std::collections::VecDeque;
use std::fs::{File, OpenOptions};
use std::io::{Read, Write};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::{mpsc, Arc, Mutex, MutexGuard};

use crate::codec::{decode, encode};
use crate::metrics::{Metrics, Stage};
use crate::types::Entry;

/// A segment is closed and a new one started once it is this large.
const SEGMENT_BYTES: u64 = 16 << 20;
const HEADER: usize = 8;
/// No single entry is larger (the proposer caps batches at 1 MiB of keys and values).
const MAX_RECORD: u32 = 256 << 20;

#[derive(Debug, thiserror::Error)]
pub enum WalError {
    #[error("raft log {path}: {message}")]
    Io { path: String, message: String },
    #[error("raft log {path}: corrupt record at byte {offset}: {message}")]
    Corrupt {
        path: String,
        offset: u64,
        message: String,
    },
    #[error("raft log: entry {got} follows {last}; entries must be contiguous")]
    Gap { last: u64, got: u64 },
}

fn io_err(path: &Path, e: impl std::fmt::Display) -> WalError {
    WalError::Io {
        path: path.display().to_string(),
        message: e.to_string(),
    }
}

/// One segment file: the index of its first entry and its handle.
struct Segment {
    first: u64,
    path: PathBuf,
    file: Arc<File>,
    len: u64,
}

/// Where one entry's record lies.
#[derive(Clone, Copy)]
struct Pos {
    /// Position in `Files::segments` counted from `Files::segment_base`.
    segment: u64,
    offset: u64,
    len: u32,
}

struct Files {
    dir: PathBuf,
    segments: VecDeque<Segment>,
    /// The number of segments ever dropped from the front, so a `Pos` stays valid.
    segment_base: u64,
    /// Index of `positions[0]`.
    first_index: u64,
    positions: VecDeque<Pos>,
}

/// What the flusher thread is asked to do.
enum Flush {
    /// Sync `file`, then call `done`.
    After(Arc<File>, Box<dyn FnOnce(std::io::Result<()>) + Send>),
}

/// The log's files. Cheap to clone; every clone shares them.
#[derive(Clone)]
pub struct Wal {
    files: Arc<Mutex<Files>>,
    flusher: mpsc::Sender<Flush>,
}

impl Wal {
    /// Opens (creating) the log in `dir`, reading back every entry's position. `metrics`
    /// counts and times the syncs.
    pub fn open(dir: &Path, metrics: Metrics) -> Result<Wal, WalError> {
        std::fs::create_dir_all(dir).map_err(|e| io_err(dir, e))?;
        let mut names: Vec<(u64, PathBuf)> = std::fs::read_dir(dir)
            .map_err(|e| io_err(dir, e))?
            .filter_map(|d| d.ok())
            .filter_map(|d| {
                let path = d.path();
                let first = path
                    .file_name()?
                    .to_str()?
                    .strip_suffix(".wal")?
                    .parse()
                    .ok()?;
                Some((first, path))
            })
            .collect();
        names.sort();
        let mut files = Files {
            dir: dir.to_path_buf(),
            segments: VecDeque::new(),
            segment_base: 0,
            first_index: 0,
            positions: VecDeque::new(),
        };
        let count = names.len();
        for (i, (first, path)) in names.into_iter().enumerate() {
            files.load_segment(first, path, i + 1 == count)?;
        }
        let (flusher, jobs) = mpsc::channel();
        std::thread::Builder::new()
            .name("raft-log-flush".into())
            .spawn(move || flush_loop(jobs, metrics))
            .map_err(|e| io_err(dir, e))?;
        Ok(Wal {
            files: Arc::new(Mutex::new(files)),
            flusher,
        })
    }

    fn lock(&self) -> MutexGuard<'_, Files> {
        self.files.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The index of the last entry, if any.
    pub fn last_index(&self) -> Option<u64> {
        let f = self.lock();
        (f.positions.len() as u64)
            .checked_sub(1)
            .map(|n| f.first_index + n)
    }

    /// Writes `entries` (contiguous, following the last one, or starting anew after
    /// everything was truncated or purged) and asks the flusher to call `done` once they
    /// are durable.
    pub fn append(
        &self,
        entries: Vec<Entry>,
        done: Box<dyn FnOnce(std::io::Result<()>) + Send>,
    ) -> Result<(), WalError> {
        let mut f = self.lock();
        let mut next = f.next_index();
        let mut buf = Vec::new();
        let mut lens = Vec::with_capacity(entries.len());
        let start = entries.first().map(|e| e.log_id.index);
        for entry in &entries {
            let index = entry.log_id.index;
            if !f.positions.is_empty() && index != next {
                return Err(WalError::Gap {
                    last: next.saturating_sub(1),
                    got: index,
                });
            }
            next = index + 1;
            let payload = encode(entry).map_err(|e| io_err(&f.dir, e))?;
            let len = u32::try_from(payload.len())
                .ok()
                .filter(|l| *l <= MAX_RECORD)
                .ok_or_else(|| io_err(&f.dir, format!("an entry of {} bytes", payload.len())))?;
            buf.extend_from_slice(&len.to_le_bytes());
            buf.extend_from_slice(&crc32fast::hash(&payload).to_le_bytes());
            buf.extend_from_slice(&payload);
            lens.push(len);
        }
        let Some(start) = start else {
            drop(f);
            done(Ok(()));
            return Ok(());
        };
        let fresh = f.positions.is_empty();
        if fresh {
            // Nothing live is left (all purged or truncated): start over in a new segment,
            // so every segment's records follow on from its name.
            while let Some(seg) = f.segments.pop_front() {
                std::fs::remove_file(&seg.path).map_err(|e| io_err(&seg.path, e))?;
                f.segment_base += 1;
            }
            f.first_index = start;
        }
        let need_segment = fresh || f.segments.back().is_none_or(|s| s.len >= SEGMENT_BYTES);
        if need_segment {
            f.new_segment(start)?;
        }
        let segment_no = f.segment_base + f.segments.len() as u64 - 1;
        let seg = f
            .segments
            .back_mut()
            .ok_or_else(|| io_err(Path::new("raft-log"), "no segment"))?;
        seg.file
            .write_all_at(&buf, seg.len)
            .map_err(|e| io_err(&seg.path, e))?;
        let mut offset = seg.len;
        seg.len += buf.len() as u64;
        let file = seg.file.clone();
        for len in lens {
            f.positions.push_back(Pos {
                segment: segment_no,
                offset,
                len,
            });
            offset += HEADER as u64 + u64::from(len);
        }
        drop(f);
        self.flusher
            .send(Flush::After(file, done))
            .map_err(|_| io_err(Path::new("raft-log"), "the flusher thread is gone"))
    }

    /// The entries with indexes in `[start, end)` (those present), at most `max_bytes` of
    /// them but always one when any.
    pub fn read(&self, start: u64, end: u64, max_bytes: usize) -> Result<Vec<Entry>, WalError> {
        let (first, jobs) = {
            let f = self.lock();
            let first = start.max(f.first_index);
            let stop = end.min(f.next_index());
            let mut jobs = Vec::new();
            let mut bytes = 0usize;
            let mut i = first;
            while i < stop {
                let pos = f.positions[(i - f.first_index) as usize];
                if !jobs.is_empty() && bytes.saturating_add(pos.len as usize) > max_bytes {
                    break;
                }
                bytes = bytes.saturating_add(pos.len as usize);
                let seg = &f.segments[(pos.segment - f.segment_base) as usize];
                jobs.push((seg.file.clone(), seg.path.clone(), pos));
                i += 1;
            }
            (first, jobs)
        };
        let mut out = Vec::with_capacity(jobs.len());
        for (n, (file, path, pos)) in jobs.into_iter().enumerate() {
            let mut buf = vec![0u8; HEADER + pos.len as usize];
            file.read_exact_at(&mut buf, pos.offset)
                .map_err(|e| io_err(&path, e))?;
            let entry = check_record(&buf[..HEADER], &buf[HEADER..])
                .and_then(|payload| decode::<Entry>(payload).map_err(|e| e.to_string()))
                .map_err(|message| WalError::Corrupt {
                    path: path.display().to_string(),
                    offset: pos.offset,
                    message,
                })?;
            if entry.log_id.index != first + n as u64 {
                return Err(WalError::Corrupt {
                    path: path.display().to_string(),
                    offset: pos.offset,
                    message: format!(
                        "entry {} where {} belongs",
                        entry.log_id.index,
                        first + n as u64
                    ),
                });
            }
            out.push(entry);
        }
        Ok(out)
    }

    /// Removes every entry at `index` and after, durably.
    pub fn truncate(&self, index: u64) -> Result<(), WalError> {
        let mut f = self.lock();
        if index >= f.next_index() {
            return Ok(());
        }
        let keep = index.saturating_sub(f.first_index) as usize;
        let cut = f.positions.get(keep).copied();
        f.positions.truncate(keep);
        let Some(cut) = cut else {
            return Ok(());
        };
        // Whole segments after the cut go; the cut one is shortened.
        while f.segment_base + f.segments.len() as u64 - 1 > cut.segment {
            if let Some(seg) = f.segments.pop_back() {
                std::fs::remove_file(&seg.path).map_err(|e| io_err(&seg.path, e))?;
            }
        }
        if let Some(seg) = f.segments.back_mut() {
            seg.file
                .set_len(cut.offset)
                .and_then(|()| seg.file.sync_all())
                .map_err(|e| io_err(&seg.path, e))?;
            seg.len = cut.offset;
        }
        sync_dir(&f.dir)
    }

    /// Forgets every entry up to and including `index`, deleting the segments that hold
    /// nothing else.
    pub fn purge(&self, index: u64) -> Result<(), WalError> {
        let mut f = self.lock();
        let drop = (index + 1)
            .saturating_sub(f.first_index)
            .min(f.positions.len() as u64);
        f.positions.drain(..drop as usize);
        f.first_index = f.first_index.max(index + 1);
        // A segment goes when the next one starts at or before the first kept entry.
        while f.segments.len() > 1 && f.segments[1].first <= f.first_index {
            if let Some(seg) = f.segments.pop_front() {
                std::fs::remove_file(&seg.path).map_err(|e| io_err(&seg.path, e))?;
                f.segment_base += 1;
            }
        }
        if f.positions.is_empty() {
            // Nothing kept: the next append may start anywhere, in a fresh segment.
            while let Some(seg) = f.segments.pop_front() {
                std::fs::remove_file(&seg.path).map_err(|e| io_err(&seg.path, e))?;
                f.segment_base += 1;
            }
        }
        sync_dir(&f.dir)
    }
}

impl Files {
    fn next_index(&self) -> u64 {
        self.first_index + self.positions.len() as u64
    }

    fn new_segment(&mut self, first: u64) -> Result<(), WalError> {
        let path = self.dir.join(format!("{first:020}.wal"));
        let file = OpenOptions::new()
            .create(true)
            .truncate(true)
            .read(true)
            .write(true)
            .open(&path)
            .map_err(|e| io_err(&path, e))?;
        sync_dir(&self.dir)?;
        self.segments.push_back(Segment {
            first,
            path,
            file: Arc::new(file),
            len: 0,
        });
        Ok(())
    }

    /// Reads one segment's records into `positions`. A bad record ends the newest segment
    /// (cut off there); in an older one it is an error.
    fn load_segment(&mut self, first: u64, path: PathBuf, newest: bool) -> Result<(), WalError> {
        let mut file = OpenOptions::new()
            .read(true)
            .write(true)
            .open(&path)
            .map_err(|e| io_err(&path, e))?;
        let mut bytes = Vec::new();
        file.read_to_end(&mut bytes).map_err(|e| io_err(&path, e))?;
        let segment = self.segment_base + self.segments.len() as u64;
        let mut offset = 0usize;
        let mut expected = first;
        let mut good = 0usize;
        let bad = loop {
            if offset == bytes.len() {
                break None;
            }
            let Some(header) = bytes.get(offset..offset + HEADER) else {
                break Some("a record header cut short".to_string());
            };
            let len = u32::from_le_bytes([header[0], header[1], header[2], header[3]]);
            let Some(payload) = bytes.get(offset + HEADER..offset + HEADER + len as usize) else {
                break Some("a record cut short".to_string());
            };
            let entry = match check_record(header, payload)
                .and_then(|p| decode::<Entry>(p).map_err(|e| e.to_string()))
            {
                Ok(e) => e,
                Err(m) => break Some(m),
            };
            if entry.log_id.index != expected {
                break Some(format!(
                    "entry {} where {expected} belongs",
                    entry.log_id.index
                ));
            }
            if self.positions.is_empty() {
                self.first_index = expected;
            } else if self.next_index() != expected {
                return Err(WalError::Gap {
                    last: self.next_index().saturating_sub(1),
                    got: expected,
                });
            }
            self.positions.push_back(Pos {
                segment,
                offset: offset as u64,
                len,
            });
            expected += 1;
            offset += HEADER + len as usize;
            good = offset;
        };
        if let Some(message) = bad {
            if !newest {
                return Err(WalError::Corrupt {
                    path: path.display().to_string(),
                    offset: offset as u64,
                    message,
                });
            }
            tracing::warn!(
                path = %path.display(),
                offset,
                reason = %message,
                "cutting a torn record off the end of the raft log"
            );
            file.set_len(good as u64)
                .and_then(|()| file.sync_all())
                .map_err(|e| io_err(&path, e))?;
        }
        file.flush().map_err(|e| io_err(&path, e))?;
        self.segments.push_back(Segment {
            first,
            path,
            file: Arc::new(file),
            len: good as u64,
        });
        Ok(())
    }
}

/// The payload, if the header's length and checksum match it.
fn check_record<'a>(header: &[u8], payload: &'a [u8]) -> Result<&'a [u8], String> {
    let crc = u32::from_le_bytes([header[4], header[5], header[6], header[7]]);
    if crc32fast::hash(payload) != crc {
        return Err("checksum mismatch".into());
    }
    Ok(payload)
}

fn sync_dir(dir: &Path) -> Result<(), WalError> {
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(|e| io_err(dir, e))
}

/// Syncs each file once for every batch of waiting appends, then completes them in order.
/// Ends when every [`Wal`] handle is gone.
fn flush_loop(jobs: mpsc::Receiver<Flush>, metrics: Metrics) {
    while let Ok(first) = jobs.recv() {
        let mut batch = vec![first];
        while let Ok(more) = jobs.try_recv() {
            batch.push(more);
        }
        let mut synced: Vec<(Arc<File>, Result<(), String>)> = Vec::new();
        for Flush::After(file, _) in &batch {
            if !synced.iter().any(|(f, _)| Arc::ptr_eq(f, file)) {
                let started = std::time::Instant::now();
                let r = file.sync_data().map_err(|e| e.to_string());
                metrics.log_flushed();
                metrics.observe_stage(Stage::LogFlush, started.elapsed());
                synced.push((file.clone(), r));
            }
        }
        for Flush::After(file, done) in batch {
            let result = synced
                .iter()
                .find(|(f, _)| Arc::ptr_eq(f, &file))
                .map_or(Ok(()), |(_, r)| r.clone());
            done(result.map_err(std::io::Error::other));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::types::LogId;
    use openraft::{CommittedLeaderId, EntryPayload};

    fn entry(index: u64) -> Entry {
        Entry {
            log_id: LogId::new(CommittedLeaderId::new(1, 1), index),
            payload: EntryPayload::Blank,
        }
    }

    fn append(wal: &Wal, range: std::ops::Range<u64>) {
        let (tx, rx) = mpsc::channel();
        wal.append(
            range.map(entry).collect(),
            Box::new(move |r| {
                let _ = tx.send(r.is_ok());
            }),
        )
        .expect("append");
        assert!(rx.recv().expect("flushed"), "the flush succeeded");
    }

    fn indexes(wal: &Wal) -> Vec<u64> {
        wal.read(0, u64::MAX, usize::MAX)
            .expect("read")
            .iter()
            .map(|e| e.log_id.index)
            .collect()
    }

    #[test]
    fn entries_survive_reopening_and_a_torn_tail_is_cut_off() {
        let dir = tempfile::tempdir().expect("tempdir");
        let wal = Wal::open(dir.path(), Metrics::new()).expect("open");
        append(&wal, 1..4);
        append(&wal, 4..6);
        drop(wal);
        // A crash mid-write leaves half a record at the end.
        let seg = dir.path().join(format!("{:020}.wal", 1));
        let mut f = OpenOptions::new().append(true).open(&seg).expect("segment");
        f.write_all(&[200, 0, 0, 0, 1, 2]).expect("torn write");
        drop(f);
        let wal = Wal::open(dir.path(), Metrics::new()).expect("reopen");
        assert_eq!(indexes(&wal), vec![1, 2, 3, 4, 5]);
        append(&wal, 6..7);
        assert_eq!(wal.last_index(), Some(6));
    }

    #[test]
    fn a_corrupt_record_in_an_older_segment_is_an_error() {
        let dir = tempfile::tempdir().expect("tempdir");
        let wal = Wal::open(dir.path(), Metrics::new()).expect("open");
        append(&wal, 1..3);
        {
            let mut f = wal.lock();
            f.new_segment(3).expect("segment");
        }
        append(&wal, 3..5);
        drop(wal);
        let seg = dir.path().join(format!("{:020}.wal", 1));
        let mut bytes = std::fs::read(&seg).expect("read");
        let last = bytes.len() - 1;
        bytes[last] ^= 0xff;
        std::fs::write(&seg, bytes).expect("write");
        let err = Wal::open(dir.path(), Metrics::new())
            .err()
            .expect("refused");
        assert!(err.to_string().contains("corrupt record"), "{err}");
    }

    #[test]
    fn truncate_and_purge_keep_what_remains_readable_across_segments() {
        let dir = tempfile::tempdir().expect("tempdir");
        let wal = Wal::open(dir.path(), Metrics::new()).expect("open");
        append(&wal, 1..4);
        wal.lock().new_segment(4).expect("segment");
        append(&wal, 4..8);
        wal.truncate(6).expect("truncate");
        assert_eq!(indexes(&wal), vec![1, 2, 3, 4, 5]);
        append(&wal, 6..7);
        wal.truncate(3).expect("truncate into the first segment");
        assert_eq!(indexes(&wal), vec![1, 2]);
        append(&wal, 3..9);
        wal.purge(4).expect("purge");
        assert_eq!(indexes(&wal), vec![5, 6, 7, 8]);
        assert_eq!(wal.read(6, 8, 1).expect("read").len(), 1, "at least one");
        drop(wal);
        let wal = Wal::open(dir.path(), Metrics::new()).expect("reopen");
        // Reopened, entries below a purge mark may still be in a kept segment: the
        // caller's purge mark says where the log starts.
        assert_eq!(indexes(&wal).last(), Some(&8));
        wal.purge(8).expect("purge all");
        assert_eq!(wal.last_index(), None);
        append(&wal, 20..22);
        assert_eq!(indexes(&wal), vec![20, 21]);
    }
}
