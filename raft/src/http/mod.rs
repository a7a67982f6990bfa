//! The client-facing HTTP API (being written on the `serve` branch).
use crate::node::StoreHandle;

pub fn router(_handle: StoreHandle) -> axum::Router {
    todo!()
}
