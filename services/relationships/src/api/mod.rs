//! tonic handlers: unpack the request, ask identity, call the store, convert.

pub mod advisors;
pub mod convert;
pub mod customers;
pub mod delegated;
pub mod links;
pub mod reseller;
pub mod service_requests;

pub(crate) type Rpc<T> = Result<tonic::Response<T>, tonic::Status>;
