//! Figure 3: product-key redemption, on distinct keys (throughput against
//! B1) and with 64 contenders per key (no double redemption; the losers
//! fail fast).

use std::sync::{
    atomic::{AtomicU32, Ordering},
    Arc,
};

use sovra_commerce::ProductKey;
use sovra_proto::commerce::v1 as com;
use tonic::transport::Channel;

use crate::{
    load::{self, Answer, Outcome},
    world::{authed, refusal, World},
};

/// Imports `n` new keys (operator, 1,000 a call); returns them.
pub async fn import(ch: &Channel, operator: &str, n: usize) -> anyhow::Result<Vec<String>> {
    let keys: Vec<String> = (0..n).map(|_| ProductKey::generate().formatted()).collect();
    let mut client = com::product_key_service_client::ProductKeyServiceClient::new(ch.clone());
    for batch in keys.chunks(1000) {
        let r = client
            .import_product_keys(authed(
                operator,
                com::ImportProductKeysRequest {
                    request_id: uuid::Uuid::new_v4().to_string(),
                    keys: batch
                        .iter()
                        .map(|k| com::ProductKeyImport {
                            product_key: k.clone(),
                            product_id: "office-business".into(),
                            license_count: 5,
                            term_days: 365,
                        })
                        .collect(),
                },
            ))
            .await?
            .into_inner();
        anyhow::ensure!(
            r.imported_count as usize == batch.len(),
            "imported {} of {} keys",
            r.imported_count,
            batch.len()
        );
    }
    Ok(keys)
}

/// One redemption of `key` by the partner's agent for the world's customer.
async fn redeem(
    ch: Channel,
    token: &str,
    partner: &str,
    customer: &str,
    key: &str,
) -> Result<(), tonic::Status> {
    com::product_key_service_client::ProductKeyServiceClient::new(ch)
        .redeem_product_key(authed(
            token,
            com::RedeemProductKeyRequest {
                request_id: uuid::Uuid::new_v4().to_string(),
                partner_tenant_id: partner.to_owned(),
                product_key: key.to_owned(),
                customer_tenant_id: customer.to_owned(),
                offer_delegated_admin: false,
            },
        ))
        .await
        .map(|_| ())
}

/// Distinct keys, one attempt each, as fast as answered.
pub async fn distinct(
    spec: load::Spec,
    channels: &[Channel],
    pid: u32,
    w: &World,
    keys: Vec<String>,
) -> Outcome {
    let keys = Arc::new(keys);
    let (token, partner, customer) = (w.agent.clone(), w.partner.clone(), w.customer.id.clone());
    load::run(spec, channels, pid, move |ch, n| {
        let keys = keys.clone();
        let (token, partner, customer) = (token.clone(), partner.clone(), customer.clone());
        async move {
            let key = keys
                .get(n as usize)
                .ok_or_else(|| format!("ran out of keys after {}", keys.len()))?;
            redeem(ch, &token, &partner, &customer, key)
                .await
                .map_err(refusal)
        }
    })
    .await
}

/// What the contention run found.
pub struct Contention {
    pub outcome: Outcome,
    pub keys: usize,
    /// Keys redeemed more than once (must be none).
    pub doubles: usize,
    /// Keys no contender redeemed (must be none: someone wins each race).
    pub unredeemed: usize,
}

/// `contenders` attempts on each key, the attempts on one key sent together
/// (sequence numbers n / contenders name the key); `spec.limit` attempts in
/// all. A loser must get FAILED_PRECONDITION PRODUCT_KEY_ALREADY_REDEEMED or
/// ABORTED PRODUCT_KEY_BEING_REDEEMED.
pub async fn contended(
    spec: load::Spec,
    channels: &[Channel],
    pid: u32,
    w: &World,
    keys: Vec<String>,
    contenders: u64,
) -> Contention {
    let n_keys = keys.len();
    let keys = Arc::new(keys);
    let wins: Arc<Vec<AtomicU32>> = Arc::new((0..n_keys).map(|_| AtomicU32::new(0)).collect());
    let (token, partner, customer) = (w.agent.clone(), w.partner.clone(), w.customer.id.clone());
    let counted = wins.clone();
    let outcome = load::run(spec, channels, pid, move |ch, n| {
        let keys = keys.clone();
        let wins = counted.clone();
        let (token, partner, customer) = (token.clone(), partner.clone(), customer.clone());
        async move {
            let i = (n / contenders) as usize;
            let key = keys
                .get(i)
                .ok_or_else(|| format!("ran out of keys after {}", keys.len()))?;
            match redeem(ch, &token, &partner, &customer, key).await {
                Ok(()) => {
                    wins[i].fetch_add(1, Ordering::Relaxed);
                    Ok(Answer::Ok)
                }
                // Lost: already redeemed, or being redeemed right now.
                Err(s)
                    if (s.code() == tonic::Code::FailedPrecondition
                        && s.message().contains("already redeemed"))
                        || (s.code() == tonic::Code::Aborted
                            && s.message().contains("redeeming this product key")) =>
                {
                    Ok(Answer::Lost)
                }
                Err(s) => Err(refusal(s)),
            }
        }
    })
    .await;
    let attempted = ((outcome.ok + outcome.lost + outcome.errors) / contenders) as usize;
    let doubles = wins
        .iter()
        .filter(|w| w.load(Ordering::Relaxed) > 1)
        .count();
    let unredeemed = wins
        .iter()
        .take(attempted.min(n_keys))
        .filter(|w| w.load(Ordering::Relaxed) == 0)
        .count();
    Contention {
        outcome,
        keys: attempted,
        doubles,
        unredeemed,
    }
}
