//! Relationship kinds and the lifecycles of delegated administration and
//! service requests, with their stored names.

use sovra_runtime::{features::Feature, stored_enum, Error};

stored_enum!(
    /// The kinds of link this service issues; the slug is the link path.
    LinkKind { Reseller => "reseller", DelegatedAdmin => "delegated-admin" }
);

impl LinkKind {
    /// For messages: "reseller request".
    pub fn label(self) -> &'static str {
        match self {
            LinkKind::Reseller => "reseller request",
            LinkKind::DelegatedAdmin => "delegated-admin offer",
        }
    }

    /// The feature that must be on for links of this kind.
    pub fn feature(self) -> Feature {
        match self {
            LinkKind::Reseller => Feature::ResellerRelationships,
            LinkKind::DelegatedAdmin => Feature::DelegatedAdmin,
        }
    }
}

stored_enum!(
    /// One way a partner is related to a customer.
    RelationshipKind {
        Reseller => "RESELLER",
        Advisor => "ADVISOR",
        DelegatedAdmin => "DELEGATED_ADMIN",
        PartnerOfRecord => "PARTNER_OF_RECORD",
    }
);

stored_enum!(
    /// PENDING → ACTIVE → REMOVED | REASSIGNED.
    DelegatedState {
        Pending => "PENDING",
        Active => "ACTIVE",
        Removed => "REMOVED",
        Reassigned => "REASSIGNED",
    }
);

stored_enum!(
    /// DRAFT → SUBMITTED → IN_PROGRESS → RESOLVED.
    ServiceRequestState {
        Draft => "DRAFT",
        Submitted => "SUBMITTED",
        InProgress => "IN_PROGRESS",
        Resolved => "RESOLVED",
    }
);

impl ServiceRequestState {
    /// Whether the operator may move a request from `self` to `to`.
    pub fn operator_may_move_to(self, to: ServiceRequestState) -> Result<(), Error> {
        use ServiceRequestState::*;
        let ok = matches!(
            (self, to),
            (Submitted, InProgress) | (Submitted, Resolved) | (InProgress, Resolved)
        );
        if ok {
            Ok(())
        } else {
            Err(Error::failed_precondition(
                "INVALID_STATE_TRANSITION",
                format!("a service request in {self} cannot move to {to}; the operator moves SUBMITTED requests to IN_PROGRESS or RESOLVED, and IN_PROGRESS ones to RESOLVED"),
            ))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::ServiceRequestState::*;

    #[test]
    fn the_operator_moves_submitted_requests_forward_only() {
        assert!(Submitted.operator_may_move_to(InProgress).is_ok());
        assert!(Submitted.operator_may_move_to(Resolved).is_ok());
        assert!(InProgress.operator_may_move_to(Resolved).is_ok());
        for (from, to) in [
            (Draft, InProgress),
            (Draft, Resolved),
            (Resolved, InProgress),
            (InProgress, Submitted),
            (Resolved, Resolved),
        ] {
            let e = from.operator_may_move_to(to).unwrap_err();
            assert_eq!(e.reason, "INVALID_STATE_TRANSITION", "{from} → {to}");
        }
    }
}
