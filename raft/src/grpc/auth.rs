//! Authentication for the etcd API. A store started with `--token-file` has one shared
//! secret; etcd clients present it as etcd users do: `etcdctl --user NAME:TOKEN` makes one
//! `Auth/Authenticate` call (any user name, the token as password) and gets back a token
//! that later calls carry as `token` metadata. [`TokenCheck`] guards every other service,
//! except the two methods etcd 3.4 itself serves to anyone (`MemberList`, `Status`). A
//! watch without the token is answered as etcd answers it: created and canceled at once,
//! with the reason.
//! Users and roles are not part of Miniku: the other Auth methods answer `Unimplemented`.

use std::convert::Infallible;
use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};

use etcd_client::proto::{PbAuthenticateRequest, PbAuthenticateResponse};
use tonic::codegen::http;
use tonic::server::NamedService;
use tonic::{Request, Response, Status};

use super::{etcd_errors, header};
use crate::auth::Token;
use crate::node::StoreHandle;

/// Refuses calls that do not carry the store's token (when it has one), with etcd's errors.
#[derive(Clone)]
pub struct TokenCheck {
    token: Option<Token>,
}

impl TokenCheck {
    pub fn new(token: Option<Token>) -> Self {
        TokenCheck { token }
    }
}

impl TokenCheck {
    /// Whether the request's headers (gRPC metadata) carry the token (always, for a store
    /// without one).
    pub fn check(&self, headers: &http::HeaderMap) -> Result<(), Status> {
        let Some(token) = &self.token else {
            return Ok(());
        };
        let given = headers
            .get("token")
            .or_else(|| headers.get("authorization"))
            .and_then(|v| v.to_str().ok())
            .map(|v| v.strip_prefix("Bearer ").unwrap_or(v));
        match given {
            None => Err(Status::invalid_argument(etcd_errors::USER_EMPTY)),
            Some(t) if token.matches(t) => Ok(()),
            Some(_) => Err(Status::unauthenticated(etcd_errors::INVALID_AUTH_TOKEN)),
        }
    }
}

/// Methods etcd 3.4 serves without credentials, which etcd's tools rely on:
/// `etcdctl ... --cluster` lists the members before it authenticates.
const OPEN_METHODS: &[&str] = &[
    "/etcdserverpb.Cluster/MemberList",
    "/etcdserverpb.Maintenance/Status",
];

/// A gRPC service behind the token check.
#[derive(Clone)]
pub struct Guarded<S> {
    inner: S,
    tokens: TokenCheck,
}

impl<S> Guarded<S> {
    pub fn new(inner: S, tokens: TokenCheck) -> Self {
        Guarded { inner, tokens }
    }
}

impl<S: NamedService> NamedService for Guarded<S> {
    const NAME: &'static str = S::NAME;
}

impl<S> tower::Service<http::Request<tonic::body::Body>> for Guarded<S>
where
    S: tower::Service<
            http::Request<tonic::body::Body>,
            Response = http::Response<tonic::body::Body>,
            Error = Infallible,
        > + Clone
        + Send
        + 'static,
    S::Future: Send + 'static,
{
    type Response = http::Response<tonic::body::Body>;
    type Error = Infallible;
    type Future = BoxFuture<Result<Self::Response, Infallible>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: http::Request<tonic::body::Body>) -> Self::Future {
        let open = OPEN_METHODS.contains(&req.uri().path());
        match self.tokens.check(req.headers()) {
            Err(refused) if !open => Box::pin(async move { Ok(refused.into_http()) }),
            _ => Box::pin(self.inner.call(req)),
        }
    }
}

/// The `etcdserverpb.Auth` service: `Authenticate` only.
#[derive(Clone)]
pub struct AuthService {
    handle: StoreHandle,
}

impl AuthService {
    pub fn new(handle: StoreHandle) -> Self {
        AuthService { handle }
    }
}

impl NamedService for AuthService {
    const NAME: &'static str = "etcdserverpb.Auth";
}

type BoxFuture<T> = Pin<Box<dyn Future<Output = T> + Send>>;

/// `Authenticate` as a unary gRPC method.
struct Authenticate(StoreHandle);

impl tonic::server::UnaryService<PbAuthenticateRequest> for Authenticate {
    type Response = PbAuthenticateResponse;
    type Future = BoxFuture<Result<Response<PbAuthenticateResponse>, Status>>;

    fn call(&mut self, request: Request<PbAuthenticateRequest>) -> Self::Future {
        let h = self.0.clone();
        Box::pin(async move {
            let r = request.into_inner();
            let Some(token) = h.config().client_token.clone() else {
                return Err(Status::failed_precondition(etcd_errors::AUTH_NOT_ENABLED));
            };
            if r.name.is_empty() {
                return Err(Status::invalid_argument(etcd_errors::USER_EMPTY));
            }
            if !token.matches(&r.password) {
                return Err(Status::invalid_argument(etcd_errors::AUTH_FAILED));
            }
            Ok(Response::new(PbAuthenticateResponse {
                header: header(&h, h.mvcc().current_revision()),
                token: token.expose().to_string(),
            }))
        })
    }
}

impl tower::Service<http::Request<tonic::body::Body>> for AuthService {
    type Response = http::Response<tonic::body::Body>;
    type Error = Infallible;
    type Future = BoxFuture<Result<Self::Response, Infallible>>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: http::Request<tonic::body::Body>) -> Self::Future {
        let h = self.handle.clone();
        Box::pin(async move {
            if req.uri().path() == "/etcdserverpb.Auth/Authenticate" {
                let mut grpc = tonic::server::Grpc::new(tonic_prost::ProstCodec::default());
                return Ok(grpc.unary(Authenticate(h), req).await);
            }
            let method = req
                .uri()
                .path()
                .rsplit('/')
                .next()
                .unwrap_or("")
                .to_string();
            Ok(Status::unimplemented(format!(
                "miniku: Auth/{method} is not supported: this store authenticates with one \
                 shared token (--token-file); users and roles are not part of it"
            ))
            .into_http())
        })
    }
}
