//! What the registry needs of a store, as a trait with two implementations: the store's
//! HTTP client (every component in production), and, for unit tests, the store's state
//! machine in this process ([`miniku_store::local::LocalStore`]). Both speak the store's API
//! types and errors, so the registry's logic (key layout, preconditions, fencing) is the same
//! code over either.

use futures::future::BoxFuture;
use futures::FutureExt;
use miniku_store::api::{RangeResponse, TxnRequest, TxnResponse};
use miniku_store::client::{ClientError, GetOptions, StoreClient, WatchOptions, WatchStream};

/// The store calls the registry makes.
pub trait StoreBackend: Send + Sync + 'static {
    fn txn<'a>(&'a self, txn: &'a TxnRequest) -> BoxFuture<'a, Result<TxnResponse, ClientError>>;
    fn get<'a>(
        &'a self,
        key: &'a [u8],
        opts: GetOptions,
    ) -> BoxFuture<'a, Result<RangeResponse, ClientError>>;
    /// A new lease of `ttl` seconds: its id.
    fn lease_grant(&self, ttl: i64) -> BoxFuture<'_, Result<i64, ClientError>>;
    fn lease_keepalive(&self, id: i64) -> BoxFuture<'_, Result<(), ClientError>>;
    fn lease_revoke(&self, id: i64) -> BoxFuture<'_, Result<(), ClientError>>;
    /// The store's leader, if it has one.
    fn leader_id(&self) -> BoxFuture<'_, Result<Option<u64>, ClientError>>;
    fn watch(&self, key: &[u8], opts: WatchOptions) -> WatchStream;
}

impl StoreBackend for StoreClient {
    fn txn<'a>(&'a self, txn: &'a TxnRequest) -> BoxFuture<'a, Result<TxnResponse, ClientError>> {
        StoreClient::txn(self, txn).boxed()
    }

    fn get<'a>(
        &'a self,
        key: &'a [u8],
        opts: GetOptions,
    ) -> BoxFuture<'a, Result<RangeResponse, ClientError>> {
        StoreClient::get(self, key, opts).boxed()
    }

    fn lease_grant(&self, ttl: i64) -> BoxFuture<'_, Result<i64, ClientError>> {
        async move { Ok(StoreClient::lease_grant(self, ttl).await?.id) }.boxed()
    }

    fn lease_keepalive(&self, id: i64) -> BoxFuture<'_, Result<(), ClientError>> {
        async move { StoreClient::lease_keepalive(self, id).await.map(|_| ()) }.boxed()
    }

    fn lease_revoke(&self, id: i64) -> BoxFuture<'_, Result<(), ClientError>> {
        async move { StoreClient::lease_revoke(self, id).await.map(|_| ()) }.boxed()
    }

    fn leader_id(&self) -> BoxFuture<'_, Result<Option<u64>, ClientError>> {
        async move { Ok(StoreClient::cluster(self).await?.leader_id) }.boxed()
    }

    fn watch(&self, key: &[u8], opts: WatchOptions) -> WatchStream {
        StoreClient::watch(self, key, opts)
    }
}

#[cfg(test)]
impl StoreBackend for miniku_store::local::LocalStore {
    fn txn<'a>(&'a self, txn: &'a TxnRequest) -> BoxFuture<'a, Result<TxnResponse, ClientError>> {
        miniku_store::local::LocalStore::txn(self, txn).boxed()
    }

    fn get<'a>(
        &'a self,
        key: &'a [u8],
        opts: GetOptions,
    ) -> BoxFuture<'a, Result<RangeResponse, ClientError>> {
        miniku_store::local::LocalStore::get(self, key, opts).boxed()
    }

    fn lease_grant(&self, ttl: i64) -> BoxFuture<'_, Result<i64, ClientError>> {
        async move {
            Ok(miniku_store::local::LocalStore::lease_grant(self, ttl)
                .await?
                .id)
        }
        .boxed()
    }

    fn lease_keepalive(&self, id: i64) -> BoxFuture<'_, Result<(), ClientError>> {
        async move {
            miniku_store::local::LocalStore::lease_keepalive(self, id)
                .await
                .map(|_| ())
        }
        .boxed()
    }

    fn lease_revoke(&self, id: i64) -> BoxFuture<'_, Result<(), ClientError>> {
        async move {
            miniku_store::local::LocalStore::lease_revoke(self, id)
                .await
                .map(|_| ())
        }
        .boxed()
    }

    fn leader_id(&self) -> BoxFuture<'_, Result<Option<u64>, ClientError>> {
        async move { Ok(miniku_store::local::LocalStore::leader_id(self)) }.boxed()
    }

    fn watch(&self, key: &[u8], opts: WatchOptions) -> WatchStream {
        miniku_store::local::LocalStore::watch(self, key, opts)
    }
}
