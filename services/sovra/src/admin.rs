//! `sovra admin …`: operator commands over gRPC.

use std::path::PathBuf;

use anyhow::Context;
use clap::{Args, Subcommand};
use sovra_proto::identity::v1 as pb;
use tonic::{metadata::MetadataValue, transport::Channel, Request};

#[derive(Args)]
pub struct AdminArgs {
    /// The Sovra endpoint.
    /// (https: mutual TLS as `sovra up` serves it; http: plaintext).
    #[arg(
        long,
        default_value = "https://127.0.0.1:50051",
        env = "SOVRA_ENDPOINT"
    )]
    endpoint: String,
    /// The CA bundle that verifies an https endpoint.
    #[arg(long, default_value = "data/tls/ca.pem", env = "SOVRA_CA_FILE")]
    ca_file: std::path::PathBuf,
    /// The operator token (else read from --token-file).
    #[arg(long, env = "SOVRA_TOKEN", hide_env_values = true)]
    token: Option<String>,
    /// Where `sovra up` wrote the operator token.
    #[arg(long, default_value = "data/operator.token")]
    token_file: PathBuf,
    #[command(subcommand)]
    command: AdminCommand,
}

#[derive(Subcommand)]
enum AdminCommand {
    /// Create a partner tenant with its first global admin.
    CreatePartner {
        #[arg(long)]
        name: String,
        #[arg(long)]
        domain: String,
        /// The first global admin's user principal name (alias@domain).
        #[arg(long)]
        admin_upn: String,
        #[arg(long)]
        admin_name: String,
        /// Omit to get a temporary password that must be changed at sign-in.
        #[arg(long)]
        admin_password: Option<String>,
        /// One of the instance's data regions (default: the instance's).
        #[arg(long, default_value = "")]
        region: String,
    },
    /// Replace a partner's authorizations, e.g. DELEGATED_ADMIN,SUBSCRIPTION_ADVISOR.
    SetAuthorizations {
        #[arg(long)]
        tenant: String,
        #[arg(value_delimiter = ',')]
        authorizations: Vec<String>,
    },
    /// Set a partner's status: active or suspended.
    SetStatus {
        #[arg(long)]
        tenant: String,
        status: String,
        #[arg(long, default_value = "")]
        reason: String,
    },
    /// Show the feature flags in effect (for a tenant, or the instance).
    Features {
        #[arg(long, default_value = "")]
        tenant: String,
    },
}

fn authed<T>(token: &str, msg: T) -> anyhow::Result<Request<T>> {
    let mut req = Request::new(msg);
    let value: MetadataValue<_> = format!("Bearer {token}")
        .parse()
        .context("the token is not valid header text")?;
    req.metadata_mut().insert("authorization", value);
    Ok(req)
}

fn request_id() -> String {
    format!("admin-{}", std::process::id())
        + &format!(
            "-{}",
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_nanos())
                .unwrap_or(0)
        )
}

fn print_tenant(t: &pb::Tenant) {
    let auths: Vec<String> = t
        .partner_authorizations
        .iter()
        .filter_map(|a| pb::PartnerAuthorization::try_from(*a).ok())
        .map(|a| {
            a.as_str_name()
                .trim_start_matches("PARTNER_AUTHORIZATION_")
                .to_owned()
        })
        .collect();
    println!("tenant id       {}", t.id);
    println!("display name    {}", t.display_name);
    println!("primary domain  {}", t.primary_domain);
    println!("data region     {}", t.data_region);
    if t.kind == pb::TenantKind::Partner as i32 {
        let status = pb::PartnerStatus::try_from(t.partner_status)
            .map(|s| {
                s.as_str_name()
                    .trim_start_matches("PARTNER_STATUS_")
                    .to_owned()
            })
            .unwrap_or_default();
        println!("status          {status}");
        println!(
            "authorizations  {}",
            if auths.is_empty() {
                "(none)".to_owned()
            } else {
                auths.join(", ")
            }
        );
    }
}

fn status_error(s: tonic::Status) -> anyhow::Error {
    anyhow::anyhow!("{:?}: {}", s.code(), s.message())
}

pub async fn run(args: AdminArgs) -> anyhow::Result<()> {
    let token = match args.token {
        Some(t) => t,
        None => std::fs::read_to_string(&args.token_file)
            .with_context(|| {
                format!(
                    "no --token given and cannot read {}",
                    args.token_file.display()
                )
            })?
            .trim()
            .to_owned(),
    };
    let channel = if args.endpoint.starts_with("https://") {
        let cfg = sovra_runtime::tls::client_config("", &args.ca_file, None)
            .with_context(|| format!("--ca-file {}", args.ca_file.display()))?;
        sovra_runtime::peers::channel(
            &args.endpoint,
            Some(sovra_runtime::tls::Connector::fixed(cfg)),
        )
        .context("--endpoint is not a URL such as https://127.0.0.1:50051")?
    } else {
        Channel::from_shared(args.endpoint.clone())
            .context("--endpoint is not a URL such as http://127.0.0.1:50051")?
            .connect()
            .await
            .with_context(|| format!("cannot reach Sovra at {}", args.endpoint))?
    };
    let mut tenants = pb::tenant_service_client::TenantServiceClient::new(channel);
    match args.command {
        AdminCommand::CreatePartner {
            name,
            domain,
            admin_upn,
            admin_name,
            admin_password,
            region,
        } => {
            let resp = tenants
                .create_tenant(authed(
                    &token,
                    pb::CreateTenantRequest {
                        request_id: request_id(),
                        kind: pb::TenantKind::Partner as i32,
                        display_name: name,
                        primary_domain: domain,
                        data_region: region,
                        company_profile: None,
                        first_admin: Some(pb::FirstAdmin {
                            user_principal_name: admin_upn,
                            display_name: admin_name,
                            password: admin_password.unwrap_or_default(),
                        }),
                        syndication: false,
                    },
                )?)
                .await
                .map_err(status_error)?
                .into_inner();
            if let Some(t) = &resp.tenant {
                print_tenant(t);
            }
            if let Some(u) = &resp.first_admin {
                println!("global admin    {} ({})", u.user_principal_name, u.id);
            }
            if !resp.temporary_password.is_empty() {
                println!(
                    "temporary password (change at first sign-in): {}",
                    resp.temporary_password
                );
            }
        }
        AdminCommand::SetAuthorizations {
            tenant,
            authorizations,
        } => {
            let mut list = Vec::new();
            for a in authorizations.iter().filter(|a| !a.is_empty()) {
                let name = format!("PARTNER_AUTHORIZATION_{}", a.trim().to_ascii_uppercase());
                let v = pb::PartnerAuthorization::from_str_name(&name).with_context(|| {
                    format!("`{a}` is not an authorization: DELEGATED_ADMIN, SUBSCRIPTION_ADVISOR, SERVICE_PROVIDER or CLOUD_RESELLER")
                })?;
                list.push(v as i32);
            }
            let resp = tenants
                .set_partner_authorizations(authed(
                    &token,
                    pb::SetPartnerAuthorizationsRequest {
                        request_id: request_id(),
                        tenant_id: tenant,
                        authorizations: list,
                    },
                )?)
                .await
                .map_err(status_error)?
                .into_inner();
            if let Some(t) = &resp.tenant {
                print_tenant(t);
            }
        }
        AdminCommand::SetStatus {
            tenant,
            status,
            reason,
        } => {
            let name = format!("PARTNER_STATUS_{}", status.trim().to_ascii_uppercase());
            let v = pb::PartnerStatus::from_str_name(&name)
                .with_context(|| format!("`{status}` is not a status: active or suspended"))?;
            let resp = tenants
                .set_partner_status(authed(
                    &token,
                    pb::SetPartnerStatusRequest {
                        request_id: request_id(),
                        tenant_id: tenant,
                        status: v as i32,
                        reason,
                    },
                )?)
                .await
                .map_err(status_error)?
                .into_inner();
            if let Some(t) = &resp.tenant {
                print_tenant(t);
            }
        }
        AdminCommand::Features { tenant } => {
            let resp = tenants
                .get_features(authed(
                    &token,
                    pb::GetFeaturesRequest { tenant_id: tenant },
                )?)
                .await
                .map_err(status_error)?
                .into_inner();
            println!("instance {} region {}", resp.instance, resp.region);
            for f in resp.features {
                println!("  {:<24} {}", f.name, if f.enabled { "on" } else { "off" });
            }
        }
    }
    Ok(())
}
