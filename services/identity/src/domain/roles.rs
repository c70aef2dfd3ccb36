//! Tenant kinds, admin roles, supported-companies access, partner programs,
//! permissions and delegated-grant states, with their stored names.

use sovra_runtime::stored_enum;

stored_enum!(
    /// Partner or customer.
    TenantKind { Partner => "PARTNER", Customer => "CUSTOMER" }
);

stored_enum!(
    /// A company admin role ("assign admin access to your company").
    CompanyRole {
        GlobalAdmin => "GLOBAL_ADMIN",
        BillingAdmin => "BILLING_ADMIN",
        UserAdmin => "USER_ADMIN",
        PasswordAdmin => "PASSWORD_ADMIN",
        ServiceAdmin => "SERVICE_ADMIN",
    }
);

stored_enum!(
    /// A partner user's admin access to supported (customer) companies.
    SupportedAccess { None => "NONE", Full => "FULL", Limited => "LIMITED" }
);

stored_enum!(
    /// Program memberships the operator grants a partner.
    PartnerAuthorization {
        DelegatedAdmin => "DELEGATED_ADMIN",
        SubscriptionAdvisor => "SUBSCRIPTION_ADVISOR",
        ServiceProvider => "SERVICE_PROVIDER",
        CloudReseller => "CLOUD_RESELLER",
    }
);

stored_enum!(
    /// Set by the operator.
    PartnerStatus { Active => "ACTIVE", Suspended => "SUSPENDED" }
);

stored_enum!(
    /// The state of a delegated grant as identity enforces it.
    GrantState { Active => "ACTIVE", Removed => "REMOVED", Reassigned => "REASSIGNED" }
);

stored_enum!(
    /// One thing a user may be allowed to do in a tenant.
    Permission {
        TenantRead => "TENANT_READ",
        CompanyProfileUpdate => "COMPANY_PROFILE_UPDATE",
        UsersRead => "USERS_READ",
        UsersManage => "USERS_MANAGE",
        AdminUsersManage => "ADMIN_USERS_MANAGE",
        PasswordResetNonAdmin => "PASSWORD_RESET_NON_ADMIN",
        PasswordResetPasswordAdmin => "PASSWORD_RESET_PASSWORD_ADMIN",
        PasswordResetAdmin => "PASSWORD_RESET_ADMIN",
        SubscriptionsManage => "SUBSCRIPTIONS_MANAGE",
        ServiceRequestsManage => "SERVICE_REQUESTS_MANAGE",
        ServiceHealthRead => "SERVICE_HEALTH_READ",
        AuditRead => "AUDIT_READ",
        PartnerRelationshipsManage => "PARTNER_RELATIONSHIPS_MANAGE",
        PartnerOffersCreate => "PARTNER_OFFERS_CREATE",
        CustomersRead => "CUSTOMERS_READ",
        PartnerLinksCreate => "PARTNER_LINKS_CREATE",
    }
);

impl Permission {
    /// The permission needed to reset the password of a user holding `role`.
    pub fn to_reset_password_of(role: Option<CompanyRole>) -> Permission {
        match role {
            None => Permission::PasswordResetNonAdmin,
            Some(CompanyRole::PasswordAdmin) => Permission::PasswordResetPasswordAdmin,
            Some(_) => Permission::PasswordResetAdmin,
        }
    }

    /// The permission needed to manage (edit, delete, restore) a user holding `role`.
    pub fn to_manage_user_with(role: Option<CompanyRole>) -> Permission {
        match role {
            None => Permission::UsersManage,
            Some(_) => Permission::AdminUsersManage,
        }
    }

    /// Permissions that only make sense in a partner's own tenant.
    pub fn is_partner_only(self) -> bool {
        matches!(
            self,
            Permission::PartnerOffersCreate
                | Permission::CustomersRead
                | Permission::PartnerLinksCreate
        )
    }
}
