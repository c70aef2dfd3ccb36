//! `sovra.commerce.v1.NotificationService`: the partner-of-record feed, as
//! pages and as a resumable stream.

use std::pin::Pin;

use sovra_proto::{commerce::v1 as pb, identity::v1 as idpb};
use sovra_runtime::{auth::Ctx, ids::TenantId, paging, Error};
use tokio::sync::mpsc;
use tokio_stream::{wrappers::ReceiverStream, Stream};
use tonic::{Request, Response, Status};

use super::Rpc;
use crate::{service::Commerce, store::feed};

/// Rows read per database round trip while streaming.
const BATCH: i64 = 200;

impl Commerce {
    /// The partner's admins and agents read its feed.
    async fn feed_access(&self, ctx: &Ctx, partner: &str) -> Result<TenantId, Error> {
        let partner = self.tenant_id("partner_tenant_id", partner)?;
        self.require(ctx, &partner, idpb::Permission::CustomersRead)
            .await?;
        Ok(partner)
    }
}

fn after_sequence(value: i64) -> Result<i64, Error> {
    if value < 0 {
        return Err(Error::invalid("after_sequence", "must be 0 or more"));
    }
    Ok(value)
}

type NotificationStream =
    Pin<Box<dyn Stream<Item = Result<pb::WatchNotificationsResponse, Status>> + Send>>;

#[tonic::async_trait]
impl pb::notification_service_server::NotificationService for Commerce {
    async fn list_notifications(
        &self,
        req: Request<pb::ListNotificationsRequest>,
    ) -> Rpc<pb::ListNotificationsResponse> {
        let ctx = Ctx::of(&req)?;
        let r = req.get_ref();
        let size = paging::page_size(r.page_size)?;
        let after = match paging::decode_token("notifications", &r.page_token, 1)? {
            Some(v) => v[0].parse::<i64>().map_err(|_| {
                Error::invalid("page_token", "is not a page token this list returned")
            })?,
            None => after_sequence(r.after_sequence)?,
        };
        let partner = self.feed_access(&ctx, &r.partner_tenant_id).await?;
        let mut rows = feed::after(self.db().read(), partner.as_str(), after, size + 1).await?;
        let next = paging::cut(&mut rows, size, "notifications", |n| {
            vec![n.sequence.to_string()]
        });
        sovra_runtime::metrics::business::notifications_delivered("list", rows.len());
        Ok(Response::new(pb::ListNotificationsResponse {
            notifications: rows,
            next_page_token: next,
        }))
    }

    type WatchNotificationsStream = NotificationStream;

    async fn watch_notifications(
        &self,
        req: Request<pb::WatchNotificationsRequest>,
    ) -> Rpc<Self::WatchNotificationsStream> {
        let ctx = Ctx::of(&req)?;
        let r = req.get_ref();
        let mut last = after_sequence(r.after_sequence)?;
        let partner = self.feed_access(&ctx, &r.partner_tenant_id).await?;
        let (tx, rx) = mpsc::channel(BATCH as usize);
        let this = self.clone();
        let mut changes = self.feed_changes();
        tokio::spawn(async move {
            // Sequences are gapless and commit in order per partner, so
            // "everything after the last one sent" loses and repeats nothing.
            loop {
                changes.mark_unchanged();
                let batch = match feed::after(this.db().read(), partner.as_str(), last, BATCH).await
                {
                    Ok(b) => b,
                    Err(e) => {
                        let _ = tx.send(Err(Status::from(e))).await;
                        return;
                    }
                };
                let full = batch.len() as i64 == BATCH;
                for n in batch {
                    last = n.sequence;
                    let item = pb::WatchNotificationsResponse {
                        notification: Some(n),
                    };
                    if tx.send(Ok(item)).await.is_err() {
                        return; // The client went away.
                    }
                    sovra_runtime::metrics::business::notifications_delivered("watch", 1);
                }
                if full {
                    continue;
                }
                // Wait for a commit here, or poll for other replicas' commits.
                tokio::select! {
                    _ = changes.changed() => {}
                    _ = tokio::time::sleep(this.cfg().notification_poll) => {}
                    _ = tx.closed() => return,
                }
            }
        });
        Ok(Response::new(Box::pin(ReceiverStream::new(rx))))
    }
}
