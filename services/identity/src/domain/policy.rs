//! The access policy: may a user do something in a tenant, and why. This is
//! the only place the rules of SPEC §3–4 about roles and delegated access live.

use super::roles::{CompanyRole, GrantState, Permission, SupportedAccess, TenantKind};

/// The user asking, as stored.
#[derive(Debug, Clone)]
pub struct Subject {
    pub user_id: String,
    pub tenant_id: String,
    pub tenant_kind: TenantKind,
    pub role: Option<CompanyRole>,
    pub access: SupportedAccess,
    pub deleted: bool,
    pub blocked: bool,
}

/// Why access was granted, or `None` when it was not.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Basis {
    None,
    OwnRole,
    DelegatedFull,
    DelegatedLimited,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Decision {
    pub allowed: bool,
    pub basis: Basis,
    pub reason: String,
    /// False when the subject has no standing in the tenant at all (neither a
    /// member nor a delegated administrator): callers answer NOT_FOUND then,
    /// so tenants can't be probed.
    pub related: bool,
}

impl Decision {
    fn allow(basis: Basis, reason: String) -> Self {
        Decision {
            allowed: true,
            basis,
            reason,
            related: true,
        }
    }

    fn deny(reason: String, related: bool) -> Self {
        Decision {
            allowed: false,
            basis: Basis::None,
            reason,
            related,
        }
    }
}

/// What an admin role allows in its own tenant (delegated access reuses it:
/// FULL acts as a global admin, LIMITED as a password admin).
pub fn role_allows(role: Option<CompanyRole>, p: Permission) -> bool {
    use CompanyRole::*;
    use Permission::*;
    match p {
        TenantRead => true,
        UsersRead => role.is_some(),
        CompanyProfileUpdate
        | AdminUsersManage
        | PasswordResetAdmin
        | AuditRead
        | PartnerRelationshipsManage => role == Some(GlobalAdmin),
        UsersManage => matches!(role, Some(GlobalAdmin | UserAdmin)),
        PasswordResetNonAdmin => matches!(role, Some(GlobalAdmin | UserAdmin | PasswordAdmin)),
        PasswordResetPasswordAdmin => matches!(role, Some(GlobalAdmin | PasswordAdmin)),
        SubscriptionsManage => matches!(role, Some(GlobalAdmin | BillingAdmin)),
        ServiceRequestsManage => role.is_some(),
        ServiceHealthRead => matches!(role, Some(GlobalAdmin | PasswordAdmin | ServiceAdmin)),
        // Decided by supported-companies access in `decide`.
        PartnerOffersCreate | CustomersRead | PartnerLinksCreate => false,
    }
}

fn role_name(role: Option<CompanyRole>) -> String {
    role.map(|r| r.as_str().to_owned())
        .unwrap_or_else(|| "no admin role".to_owned())
}

/// Decides whether `subject` may do `p` in `tenant_id`. `grant` is the
/// subject's partner tenant's delegated administration of `tenant_id`, if it
/// ever had one (only consulted for another tenant).
pub fn decide(
    subject: &Subject,
    tenant_id: &str,
    p: Permission,
    grant: Option<GrantState>,
) -> Decision {
    let own = subject.tenant_id == tenant_id;
    if subject.deleted {
        return Decision::deny("the user is deleted".into(), own);
    }
    if subject.blocked {
        return Decision::deny("the user is blocked from signing in".into(), own);
    }
    if own {
        if p.is_partner_only() {
            if subject.tenant_kind != TenantKind::Partner {
                return Decision::deny(format!("{p} applies to partner tenants only"), true);
            }
            let by_access = matches!(
                subject.access,
                SupportedAccess::Full | SupportedAccess::Limited
            );
            let by_role = matches!(
                p,
                Permission::CustomersRead | Permission::PartnerLinksCreate
            ) && subject.role == Some(CompanyRole::GlobalAdmin);
            return if by_access {
                Decision::allow(
                    Basis::OwnRole,
                    format!("{} supported-companies access allows {p}", subject.access),
                )
            } else if by_role {
                Decision::allow(Basis::OwnRole, format!("GLOBAL_ADMIN allows {p}"))
            } else {
                Decision::deny(
                    format!(
                        "{p} needs FULL or LIMITED supported-companies access; the user has NONE"
                    ),
                    true,
                )
            };
        }
        return if role_allows(subject.role, p) {
            Decision::allow(
                Basis::OwnRole,
                format!("{} allows {p}", role_name(subject.role)),
            )
        } else {
            Decision::deny(
                format!("{} does not allow {p}", role_name(subject.role)),
                true,
            )
        };
    }
    if subject.tenant_kind != TenantKind::Partner {
        return Decision::deny(
            format!("the user's tenant has no access to tenant {tenant_id}"),
            false,
        );
    }
    match grant {
        None => {
            return Decision::deny(
                format!(
                    "partner {} holds no active delegated administration of tenant {tenant_id}",
                    subject.tenant_id
                ),
                false,
            )
        }
        // A former administrator is told why, not that the tenant is unknown.
        Some(ended @ (GrantState::Removed | GrantState::Reassigned)) => {
            return Decision::deny(
                format!(
                    "partner {}'s delegated administration of tenant {tenant_id} was {ended}",
                    subject.tenant_id
                ),
                true,
            )
        }
        Some(GrantState::Active) => {}
    }
    if p.is_partner_only() {
        return Decision::deny(format!("{p} applies to a partner's own tenant only"), true);
    }
    match subject.access {
        SupportedAccess::Full if role_allows(Some(CompanyRole::GlobalAdmin), p) => Decision::allow(
            Basis::DelegatedFull,
            format!("FULL supported-companies access through delegated administration allows {p}"),
        ),
        SupportedAccess::Limited if role_allows(Some(CompanyRole::PasswordAdmin), p) => Decision::allow(
            Basis::DelegatedLimited,
            format!("LIMITED supported-companies access through delegated administration allows {p}"),
        ),
        SupportedAccess::Limited => Decision::deny(
            format!(
                "LIMITED supported-companies access does not allow {p}: it allows password resets of non-admins \
                 and password admins, service requests and service health"
            ),
            true,
        ),
        _ => Decision::deny(
            format!("the user's supported-companies access is {}; {p} needs FULL or LIMITED", subject.access),
            true,
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use CompanyRole::*;
    use Permission::*;

    fn user(
        tenant: &str,
        kind: TenantKind,
        role: Option<CompanyRole>,
        access: SupportedAccess,
    ) -> Subject {
        Subject {
            user_id: "u".into(),
            tenant_id: tenant.into(),
            tenant_kind: kind,
            role,
            access,
            deleted: false,
            blocked: false,
        }
    }

    #[test]
    fn global_admins_do_everything_in_their_own_tenant() {
        let ga = user(
            "c",
            TenantKind::Customer,
            Some(GlobalAdmin),
            SupportedAccess::None,
        );
        for p in Permission::ALL.iter().filter(|p| !p.is_partner_only()) {
            assert!(decide(&ga, "c", *p, None).allowed, "{p}");
        }
    }

    #[test]
    fn user_admins_manage_non_admins_only() {
        let ua = user(
            "c",
            TenantKind::Customer,
            Some(UserAdmin),
            SupportedAccess::None,
        );
        assert!(decide(&ua, "c", UsersManage, None).allowed);
        assert!(decide(&ua, "c", PasswordResetNonAdmin, None).allowed);
        assert!(!decide(&ua, "c", AdminUsersManage, None).allowed);
        assert!(!decide(&ua, "c", PasswordResetPasswordAdmin, None).allowed);
        assert!(!decide(&ua, "c", CompanyProfileUpdate, None).allowed);
    }

    #[test]
    fn password_admins_reset_non_admins_and_password_admins() {
        let pa = user(
            "c",
            TenantKind::Customer,
            Some(PasswordAdmin),
            SupportedAccess::None,
        );
        assert!(decide(&pa, "c", PasswordResetNonAdmin, None).allowed);
        assert!(decide(&pa, "c", PasswordResetPasswordAdmin, None).allowed);
        assert!(!decide(&pa, "c", PasswordResetAdmin, None).allowed);
        assert!(!decide(&pa, "c", UsersManage, None).allowed);
    }

    #[test]
    fn members_without_a_role_only_read_their_tenant() {
        let m = user("c", TenantKind::Customer, None, SupportedAccess::None);
        assert!(decide(&m, "c", TenantRead, None).allowed);
        assert!(!decide(&m, "c", UsersRead, None).allowed);
    }

    #[test]
    fn delegated_full_acts_as_global_admin_and_limited_as_password_admin() {
        let full = user("p", TenantKind::Partner, None, SupportedAccess::Full);
        let d = decide(&full, "c", PasswordResetAdmin, Some(GrantState::Active));
        assert!(d.allowed);
        assert_eq!(d.basis, Basis::DelegatedFull);
        let limited = user("p", TenantKind::Partner, None, SupportedAccess::Limited);
        let d = decide(
            &limited,
            "c",
            PasswordResetPasswordAdmin,
            Some(GrantState::Active),
        );
        assert_eq!(d.basis, Basis::DelegatedLimited);
        let d = decide(&limited, "c", PasswordResetAdmin, Some(GrantState::Active));
        assert!(!d.allowed);
        assert!(d.related);
        assert!(d.reason.contains("LIMITED"));
    }

    #[test]
    fn without_an_active_grant_the_customer_is_out_of_reach() {
        let full = user(
            "p",
            TenantKind::Partner,
            Some(GlobalAdmin),
            SupportedAccess::Full,
        );
        let d = decide(&full, "c", TenantRead, None);
        assert!(!d.allowed);
        assert!(!d.related);
        assert!(d.reason.contains("no active delegated administration"));
        let none = user(
            "p",
            TenantKind::Partner,
            Some(GlobalAdmin),
            SupportedAccess::None,
        );
        assert!(!decide(&none, "c", TenantRead, Some(GrantState::Active)).allowed);
    }

    #[test]
    fn customers_never_reach_other_tenants() {
        let ga = user(
            "c1",
            TenantKind::Customer,
            Some(GlobalAdmin),
            SupportedAccess::Full,
        );
        assert!(!decide(&ga, "c2", TenantRead, Some(GrantState::Active)).allowed);
    }

    #[test]
    fn offers_need_supported_companies_access_in_a_partner_tenant() {
        let ga = user(
            "p",
            TenantKind::Partner,
            Some(GlobalAdmin),
            SupportedAccess::None,
        );
        assert!(!decide(&ga, "p", PartnerOffersCreate, None).allowed);
        assert!(decide(&ga, "p", CustomersRead, None).allowed);
        assert!(decide(&ga, "p", PartnerLinksCreate, None).allowed);
        let agent = user("p", TenantKind::Partner, None, SupportedAccess::Limited);
        assert!(decide(&agent, "p", PartnerOffersCreate, None).allowed);
    }

    #[test]
    fn blocked_or_deleted_users_are_denied() {
        let mut ga = user(
            "c",
            TenantKind::Customer,
            Some(GlobalAdmin),
            SupportedAccess::None,
        );
        ga.blocked = true;
        assert!(!decide(&ga, "c", TenantRead, None).allowed);
    }
}
