//! The one binary encoding of the store: bincode's standard configuration, for what goes to
//! disk (MVCC records, Raft's log and snapshots) and over the peer network. Changing it
//! would make old data directories and mixed-version clusters unreadable.
//!
//! It owns the configuration and nothing else; what is encoded is each caller's.

use serde::de::DeserializeOwned;
use serde::Serialize;

/// Why a value could not be encoded or decoded; the text is bincode's.
#[derive(Debug, Clone, thiserror::Error)]
pub enum CodecError {
    #[error("{0}")]
    Encode(String),
    #[error("{0}")]
    Decode(String),
}

pub fn encode<T: Serialize>(v: &T) -> Result<Vec<u8>, CodecError> {
    bincode::serde::encode_to_vec(v, bincode::config::standard())
        .map_err(|e| CodecError::Encode(e.to_string()))
}

pub fn decode<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, CodecError> {
    bincode::serde::decode_from_slice(bytes, bincode::config::standard())
        .map(|(v, _)| v)
        .map_err(|e| CodecError::Decode(e.to_string()))
}
