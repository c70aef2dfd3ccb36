//! `sovra.commerce.v1.CatalogService`.

use sovra_proto::commerce::v1 as pb;
use tonic::{Request, Response};

use super::{convert::product_to_pb, Rpc};
use crate::service::Commerce;

#[tonic::async_trait]
impl pb::catalog_service_server::CatalogService for Commerce {
    async fn list_products(
        &self,
        _req: Request<pb::ListProductsRequest>,
    ) -> Rpc<pb::ListProductsResponse> {
        // Public: the catalog is what the instance sells to anyone.
        let c = self.catalog();
        Ok(Response::new(pb::ListProductsResponse {
            products: c
                .products()
                .map(|p| product_to_pb(p, &c.currency))
                .collect(),
        }))
    }
}
