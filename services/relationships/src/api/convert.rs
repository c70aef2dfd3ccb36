//! Conversions between wire types and store types.

use sovra_proto::{identity::v1 as idpb, relationships::v1 as pb};
use sovra_runtime::{clock::to_timestamp, Error};

use crate::{
    domain::states::{DelegatedState, RelationshipKind, ServiceRequestState},
    store::{
        customers::CustomerRow, delegated::Relationship, links::LinkRecord,
        service_requests::ServiceRequestRow,
    },
};

fn unknown(field: &str, v: i32) -> Error {
    Error::invalid(field, format!("{v} is not a known value"))
}

pub fn kind_to_pb(k: RelationshipKind) -> i32 {
    (match k {
        RelationshipKind::Reseller => pb::RelationshipKind::Reseller,
        RelationshipKind::Advisor => pb::RelationshipKind::Advisor,
        RelationshipKind::DelegatedAdmin => pb::RelationshipKind::DelegatedAdmin,
        RelationshipKind::PartnerOfRecord => pb::RelationshipKind::PartnerOfRecord,
    }) as i32
}

pub fn kind_from_pb(field: &str, v: i32) -> Result<Option<RelationshipKind>, Error> {
    Ok(
        match pb::RelationshipKind::try_from(v).map_err(|_| unknown(field, v))? {
            pb::RelationshipKind::Unspecified => None,
            pb::RelationshipKind::Reseller => Some(RelationshipKind::Reseller),
            pb::RelationshipKind::Advisor => Some(RelationshipKind::Advisor),
            pb::RelationshipKind::DelegatedAdmin => Some(RelationshipKind::DelegatedAdmin),
            pb::RelationshipKind::PartnerOfRecord => Some(RelationshipKind::PartnerOfRecord),
        },
    )
}

pub fn state_to_pb(s: Option<DelegatedState>) -> i32 {
    (match s {
        None => pb::DelegatedAdminState::Unspecified,
        Some(DelegatedState::Pending) => pb::DelegatedAdminState::Pending,
        Some(DelegatedState::Active) => pb::DelegatedAdminState::Active,
        Some(DelegatedState::Removed) => pb::DelegatedAdminState::Removed,
        Some(DelegatedState::Reassigned) => pb::DelegatedAdminState::Reassigned,
    }) as i32
}

pub fn state_from_pb(field: &str, v: i32) -> Result<Option<DelegatedState>, Error> {
    Ok(
        match pb::DelegatedAdminState::try_from(v).map_err(|_| unknown(field, v))? {
            pb::DelegatedAdminState::Unspecified => None,
            pb::DelegatedAdminState::Pending => Some(DelegatedState::Pending),
            pb::DelegatedAdminState::Active => Some(DelegatedState::Active),
            pb::DelegatedAdminState::Removed => Some(DelegatedState::Removed),
            pb::DelegatedAdminState::Reassigned => Some(DelegatedState::Reassigned),
        },
    )
}

pub fn sr_state_to_pb(s: ServiceRequestState) -> i32 {
    (match s {
        ServiceRequestState::Draft => pb::ServiceRequestState::Draft,
        ServiceRequestState::Submitted => pb::ServiceRequestState::Submitted,
        ServiceRequestState::InProgress => pb::ServiceRequestState::InProgress,
        ServiceRequestState::Resolved => pb::ServiceRequestState::Resolved,
    }) as i32
}

pub fn sr_state_from_pb(field: &str, v: i32) -> Result<Option<ServiceRequestState>, Error> {
    Ok(
        match pb::ServiceRequestState::try_from(v).map_err(|_| unknown(field, v))? {
            pb::ServiceRequestState::Unspecified => None,
            pb::ServiceRequestState::Draft => Some(ServiceRequestState::Draft),
            pb::ServiceRequestState::Submitted => Some(ServiceRequestState::Submitted),
            pb::ServiceRequestState::InProgress => Some(ServiceRequestState::InProgress),
            pb::ServiceRequestState::Resolved => Some(ServiceRequestState::Resolved),
        },
    )
}

pub fn customer_to_pb(c: &CustomerRow) -> pb::Customer {
    pb::Customer {
        partner_tenant_id: c.partner_tenant_id.clone(),
        customer_tenant_id: c.customer_tenant_id.clone(),
        display_name: c.display_name.clone(),
        primary_domain: c.primary_domain.clone(),
        relationships: c.kinds().into_iter().map(kind_to_pb).collect(),
        delegated_admin_state: state_to_pb(c.delegated_state),
        delegated_admin_relationship_id: c.delegated_relationship_id.clone().unwrap_or_default(),
        partner_of_record: c.partner_of_record,
        create_time: Some(to_timestamp(c.created_at)),
        update_time: Some(to_timestamp(c.updated_at)),
    }
}

/// A partner as a customer (or a link's viewer) sees it.
pub fn partner_to_pb(t: &idpb::Tenant, row: Option<&CustomerRow>) -> pb::Partner {
    pb::Partner {
        partner_tenant_id: t.id.clone(),
        display_name: t.display_name.clone(),
        company_profile: t.company_profile.clone(),
        relationships: row
            .map(|r| r.kinds().into_iter().map(kind_to_pb).collect())
            .unwrap_or_default(),
        delegated_admin_state: state_to_pb(row.and_then(|r| r.delegated_state)),
    }
}

pub fn relationship_to_pb(r: &Relationship) -> pb::DelegatedAdminRelationship {
    pb::DelegatedAdminRelationship {
        id: r.id.clone(),
        partner_tenant_id: r.partner_tenant_id.clone(),
        customer_tenant_id: r.customer_tenant_id.clone(),
        state: state_to_pb(Some(r.state)),
        offer_id: r.offer_id.clone(),
        create_time: Some(to_timestamp(r.created_at)),
        activate_time: r.activated_at.map(to_timestamp),
        end_time: r.ended_at.map(to_timestamp),
        reassigned_to_partner_tenant_id: r.reassigned_to.clone().unwrap_or_default(),
        etag: r.version.to_string(),
    }
}

pub fn reseller_request_to_pb(l: &LinkRecord, code: &str) -> pb::ResellerRequest {
    pb::ResellerRequest {
        id: l.id.clone(),
        partner_tenant_id: l.partner_tenant_id.clone(),
        url: l.url.clone(),
        code: code.to_owned(),
        email_subject: l.email_subject.clone(),
        email_body: l.email_body.clone(),
        create_time: Some(to_timestamp(l.created_at)),
        expire_time: Some(to_timestamp(l.expires_at)),
        revoke_time: l.revoked_at.map(to_timestamp),
    }
}

pub fn offer_to_pb(l: &LinkRecord, code: &str) -> pb::DelegatedAdminOffer {
    pb::DelegatedAdminOffer {
        id: l.id.clone(),
        partner_tenant_id: l.partner_tenant_id.clone(),
        customer_tenant_id: l.customer_tenant_id.clone().unwrap_or_default(),
        url: l.url.clone(),
        code: code.to_owned(),
        create_time: Some(to_timestamp(l.created_at)),
        expire_time: Some(to_timestamp(l.expires_at)),
        revoke_time: l.revoked_at.map(to_timestamp),
    }
}

pub fn service_request_to_pb(s: &ServiceRequestRow) -> pb::ServiceRequest {
    pb::ServiceRequest {
        id: s.id.clone(),
        customer_tenant_id: s.customer_tenant_id.clone(),
        title: s.title.clone(),
        description: s.description.clone(),
        state: sr_state_to_pb(s.state),
        created_by_user_id: s.created_by_user_id.clone(),
        on_behalf_partner_tenant_id: s.on_behalf_partner_tenant_id.clone().unwrap_or_default(),
        resolution: s.resolution.clone(),
        create_time: Some(to_timestamp(s.created_at)),
        update_time: Some(to_timestamp(s.updated_at)),
        etag: s.version.to_string(),
    }
}
