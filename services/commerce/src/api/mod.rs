//! tonic handlers: unpack the request, ask identity, call the store, convert.

pub mod catalog;
pub mod convert;
pub mod links;
pub mod notifications;
pub mod product_keys;
pub mod redeem;
pub mod subscriptions;

pub(crate) type Rpc<T> = Result<tonic::Response<T>, tonic::Status>;
