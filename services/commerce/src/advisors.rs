//! Relationships as commerce sees it: recording the advisor relationship,
//! partner of record and delegated administration a redemption brings.

use sovra_proto::relationships::v1 as rpb;
use sovra_runtime::telemetry::PeerChannel;
use sovra_runtime::{
    peers::{passthrough, ServiceCredentials},
    Error,
};

#[derive(Debug)]
pub struct AdvisorClient {
    channel: PeerChannel,
    creds: ServiceCredentials,
}

impl AdvisorClient {
    pub fn new(channel: PeerChannel, creds: ServiceCredentials) -> Self {
        Self { channel, creds }
    }

    /// Records the relationship; the request id makes retries replays.
    pub async fn record(
        &self,
        req: rpb::RecordAdvisorRelationshipRequest,
        trace_id: &str,
    ) -> Result<rpb::RecordAdvisorRelationshipResponse, Error> {
        let mut client =
            rpb::advisor_service_client::AdvisorServiceClient::new(self.channel.clone());
        client
            .record_advisor_relationship(self.creds.request(req, trace_id))
            .await
            .map(|r| r.into_inner())
            .map_err(|s| passthrough("relationships", s))
    }
}
