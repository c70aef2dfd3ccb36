//! Conversions between wire types and domain/store types.

use sovra_proto::{common::v1 as common, identity::v1 as pb};
use sovra_runtime::{clock::to_timestamp, Error};

use crate::{
    domain::{
        policy::Basis,
        profile::CompanyProfile,
        roles::{
            CompanyRole, GrantState, PartnerAuthorization, PartnerStatus, Permission,
            SupportedAccess, TenantKind,
        },
    },
    store::{tenants::TenantRecord, users::UserRecord},
};

fn unknown(field: &str, v: i32) -> Error {
    Error::invalid(field, format!("{v} is not a known value"))
}

pub fn role_from_pb(field: &str, v: i32) -> Result<Option<CompanyRole>, Error> {
    Ok(
        match pb::CompanyRole::try_from(v).map_err(|_| unknown(field, v))? {
            pb::CompanyRole::Unspecified => None,
            pb::CompanyRole::GlobalAdmin => Some(CompanyRole::GlobalAdmin),
            pb::CompanyRole::BillingAdmin => Some(CompanyRole::BillingAdmin),
            pb::CompanyRole::UserAdmin => Some(CompanyRole::UserAdmin),
            pb::CompanyRole::PasswordAdmin => Some(CompanyRole::PasswordAdmin),
            pb::CompanyRole::ServiceAdmin => Some(CompanyRole::ServiceAdmin),
        },
    )
}

pub fn role_to_pb(r: Option<CompanyRole>) -> i32 {
    (match r {
        None => pb::CompanyRole::Unspecified,
        Some(CompanyRole::GlobalAdmin) => pb::CompanyRole::GlobalAdmin,
        Some(CompanyRole::BillingAdmin) => pb::CompanyRole::BillingAdmin,
        Some(CompanyRole::UserAdmin) => pb::CompanyRole::UserAdmin,
        Some(CompanyRole::PasswordAdmin) => pb::CompanyRole::PasswordAdmin,
        Some(CompanyRole::ServiceAdmin) => pb::CompanyRole::ServiceAdmin,
    }) as i32
}

/// `None` when unspecified (not given).
pub fn access_from_pb(field: &str, v: i32) -> Result<Option<SupportedAccess>, Error> {
    Ok(
        match pb::SupportedCompaniesAccess::try_from(v).map_err(|_| unknown(field, v))? {
            pb::SupportedCompaniesAccess::Unspecified => None,
            pb::SupportedCompaniesAccess::None => Some(SupportedAccess::None),
            pb::SupportedCompaniesAccess::Full => Some(SupportedAccess::Full),
            pb::SupportedCompaniesAccess::Limited => Some(SupportedAccess::Limited),
        },
    )
}

pub fn access_to_pb(a: SupportedAccess) -> i32 {
    (match a {
        SupportedAccess::None => pb::SupportedCompaniesAccess::None,
        SupportedAccess::Full => pb::SupportedCompaniesAccess::Full,
        SupportedAccess::Limited => pb::SupportedCompaniesAccess::Limited,
    }) as i32
}

pub fn kind_from_pb(field: &str, v: i32) -> Result<TenantKind, Error> {
    match pb::TenantKind::try_from(v).map_err(|_| unknown(field, v))? {
        pb::TenantKind::Unspecified => Err(Error::invalid(
            field,
            "is required: TENANT_KIND_PARTNER or TENANT_KIND_CUSTOMER",
        )),
        pb::TenantKind::Partner => Ok(TenantKind::Partner),
        pb::TenantKind::Customer => Ok(TenantKind::Customer),
    }
}

pub fn kind_to_pb(k: TenantKind) -> i32 {
    (match k {
        TenantKind::Partner => pb::TenantKind::Partner,
        TenantKind::Customer => pb::TenantKind::Customer,
    }) as i32
}

pub fn authorization_from_pb(field: &str, v: i32) -> Result<PartnerAuthorization, Error> {
    match pb::PartnerAuthorization::try_from(v).map_err(|_| unknown(field, v))? {
        pb::PartnerAuthorization::Unspecified => {
            Err(Error::invalid(field, "must not be UNSPECIFIED"))
        }
        pb::PartnerAuthorization::DelegatedAdmin => Ok(PartnerAuthorization::DelegatedAdmin),
        pb::PartnerAuthorization::SubscriptionAdvisor => {
            Ok(PartnerAuthorization::SubscriptionAdvisor)
        }
        pb::PartnerAuthorization::ServiceProvider => Ok(PartnerAuthorization::ServiceProvider),
        pb::PartnerAuthorization::CloudReseller => Ok(PartnerAuthorization::CloudReseller),
    }
}

pub fn authorization_to_pb(a: PartnerAuthorization) -> i32 {
    (match a {
        PartnerAuthorization::DelegatedAdmin => pb::PartnerAuthorization::DelegatedAdmin,
        PartnerAuthorization::SubscriptionAdvisor => pb::PartnerAuthorization::SubscriptionAdvisor,
        PartnerAuthorization::ServiceProvider => pb::PartnerAuthorization::ServiceProvider,
        PartnerAuthorization::CloudReseller => pb::PartnerAuthorization::CloudReseller,
    }) as i32
}

pub fn status_from_pb(field: &str, v: i32) -> Result<PartnerStatus, Error> {
    match pb::PartnerStatus::try_from(v).map_err(|_| unknown(field, v))? {
        pb::PartnerStatus::Unspecified => Err(Error::invalid(
            field,
            "is required: PARTNER_STATUS_ACTIVE or PARTNER_STATUS_SUSPENDED",
        )),
        pb::PartnerStatus::Active => Ok(PartnerStatus::Active),
        pb::PartnerStatus::Suspended => Ok(PartnerStatus::Suspended),
    }
}

pub fn status_to_pb(s: Option<PartnerStatus>) -> i32 {
    (match s {
        None => pb::PartnerStatus::Unspecified,
        Some(PartnerStatus::Active) => pb::PartnerStatus::Active,
        Some(PartnerStatus::Suspended) => pb::PartnerStatus::Suspended,
    }) as i32
}

pub fn permission_from_pb(field: &str, v: i32) -> Result<Permission, Error> {
    use pb::Permission as P;
    Ok(match P::try_from(v).map_err(|_| unknown(field, v))? {
        P::Unspecified => return Err(Error::invalid(field, "is required")),
        P::TenantRead => Permission::TenantRead,
        P::CompanyProfileUpdate => Permission::CompanyProfileUpdate,
        P::UsersRead => Permission::UsersRead,
        P::UsersManage => Permission::UsersManage,
        P::AdminUsersManage => Permission::AdminUsersManage,
        P::PasswordResetNonAdmin => Permission::PasswordResetNonAdmin,
        P::PasswordResetPasswordAdmin => Permission::PasswordResetPasswordAdmin,
        P::PasswordResetAdmin => Permission::PasswordResetAdmin,
        P::SubscriptionsManage => Permission::SubscriptionsManage,
        P::ServiceRequestsManage => Permission::ServiceRequestsManage,
        P::ServiceHealthRead => Permission::ServiceHealthRead,
        P::AuditRead => Permission::AuditRead,
        P::PartnerRelationshipsManage => Permission::PartnerRelationshipsManage,
        P::PartnerOffersCreate => Permission::PartnerOffersCreate,
        P::CustomersRead => Permission::CustomersRead,
        P::PartnerLinksCreate => Permission::PartnerLinksCreate,
    })
}

pub fn basis_to_pb(b: Basis) -> i32 {
    (match b {
        Basis::None => pb::AccessBasis::None,
        Basis::OwnRole => pb::AccessBasis::OwnRole,
        Basis::DelegatedFull => pb::AccessBasis::DelegatedFull,
        Basis::DelegatedLimited => pb::AccessBasis::DelegatedLimited,
    }) as i32
}

pub fn grant_state_from_pb(field: &str, v: i32) -> Result<GrantState, Error> {
    match pb::DelegatedGrantState::try_from(v).map_err(|_| unknown(field, v))? {
        pb::DelegatedGrantState::Unspecified => Err(Error::invalid(field, "is required")),
        pb::DelegatedGrantState::Active => Ok(GrantState::Active),
        pb::DelegatedGrantState::Removed => Ok(GrantState::Removed),
        pb::DelegatedGrantState::Reassigned => Ok(GrantState::Reassigned),
    }
}

pub fn grant_state_to_pb(s: GrantState) -> i32 {
    (match s {
        GrantState::Active => pb::DelegatedGrantState::Active,
        GrantState::Removed => pb::DelegatedGrantState::Removed,
        GrantState::Reassigned => pb::DelegatedGrantState::Reassigned,
    }) as i32
}

pub fn profile_from_pb(p: Option<common::CompanyProfile>) -> CompanyProfile {
    let p = p.unwrap_or_default();
    CompanyProfile {
        name: p.name,
        street_address: p.street_address,
        city: p.city,
        state_or_region: p.state_or_region,
        postal_code: p.postal_code,
        country_code: p.country_code,
        phone: p.phone,
        email: p.email,
        website: p.website,
        support_email: p.support_email,
        support_phone: p.support_phone,
        support_website: p.support_website,
    }
}

pub fn profile_to_pb(p: &CompanyProfile) -> common::CompanyProfile {
    common::CompanyProfile {
        name: p.name.clone(),
        street_address: p.street_address.clone(),
        city: p.city.clone(),
        state_or_region: p.state_or_region.clone(),
        postal_code: p.postal_code.clone(),
        country_code: p.country_code.clone(),
        phone: p.phone.clone(),
        email: p.email.clone(),
        website: p.website.clone(),
        support_email: p.support_email.clone(),
        support_phone: p.support_phone.clone(),
        support_website: p.support_website.clone(),
    }
}

pub fn tenant_to_pb(t: &TenantRecord, instance: &str) -> pb::Tenant {
    pb::Tenant {
        id: t.id.clone(),
        kind: kind_to_pb(t.kind),
        display_name: t.display_name.clone(),
        primary_domain: t.primary_domain.clone(),
        data_region: t.data_region.clone(),
        company_profile: Some(profile_to_pb(&t.profile)),
        partner_authorizations: t
            .authorizations
            .iter()
            .map(|a| authorization_to_pb(*a))
            .collect(),
        partner_status: status_to_pb(t.partner_status),
        syndication: t.syndication,
        etag: t.version.to_string(),
        create_time: Some(to_timestamp(t.created_at)),
        update_time: Some(to_timestamp(t.updated_at)),
        instance: instance.to_owned(),
    }
}

pub fn user_to_pb(u: &UserRecord, retention_ms: i64) -> pb::User {
    pb::User {
        id: u.id.clone(),
        tenant_id: u.tenant_id.clone(),
        user_principal_name: u.upn.clone(),
        display_name: u.display_name.clone(),
        company_role: role_to_pb(u.role),
        supported_companies_access: access_to_pb(u.access),
        blocked: u.blocked,
        state: if u.deleted_at.is_some() {
            pb::UserState::Deleted
        } else {
            pb::UserState::Active
        } as i32,
        must_change_password: u.must_change_password,
        etag: u.version.to_string(),
        create_time: Some(to_timestamp(u.created_at)),
        update_time: Some(to_timestamp(u.updated_at)),
        delete_time: u.deleted_at.map(to_timestamp),
        purge_time: u.deleted_at.map(|d| to_timestamp(d + retention_ms)),
    }
}
