//! The stored names of commerce's states and kinds.

use sovra_proto::commerce::v1 as pb;
use sovra_runtime::{features::Feature, stored_enum};

stored_enum!(
    /// What a commerce link offers; the slug is its URL path.
    LinkKind {
        Trial => "trial",
        Offer => "offer",
    }
);

impl LinkKind {
    pub fn label(self) -> &'static str {
        match self {
            LinkKind::Trial => "trial invitation",
            LinkKind::Offer => "purchase offer",
        }
    }

    /// The flag that switches this kind of link on.
    pub fn feature(self) -> Feature {
        match self {
            LinkKind::Trial => Feature::Trials,
            LinkKind::Offer => Feature::PurchaseOffers,
        }
    }

    pub fn to_pb(self) -> pb::LinkKind {
        match self {
            LinkKind::Trial => pb::LinkKind::TrialInvitation,
            LinkKind::Offer => pb::LinkKind::PurchaseOffer,
        }
    }
}

stored_enum!(
    SubscriptionState {
        Trial => "TRIAL",
        Active => "ACTIVE",
        Suspended => "SUSPENDED",
        Cancelled => "CANCELLED",
        Expired => "EXPIRED",
    }
);

impl SubscriptionState {
    pub fn to_pb(self) -> pb::SubscriptionState {
        match self {
            SubscriptionState::Trial => pb::SubscriptionState::Trial,
            SubscriptionState::Active => pb::SubscriptionState::Active,
            SubscriptionState::Suspended => pb::SubscriptionState::Suspended,
            SubscriptionState::Cancelled => pb::SubscriptionState::Cancelled,
            SubscriptionState::Expired => pb::SubscriptionState::Expired,
        }
    }

    /// Still running: its licenses can change.
    pub fn is_live(self) -> bool {
        matches!(self, SubscriptionState::Trial | SubscriptionState::Active)
    }
}

stored_enum!(
    Source {
        TrialInvitation => "TRIAL_INVITATION",
        PurchaseOffer => "PURCHASE_OFFER",
        ProductKey => "PRODUCT_KEY",
        SelfService => "SELF_SERVICE",
    }
);

impl Source {
    pub fn to_pb(self) -> pb::SubscriptionSource {
        match self {
            Source::TrialInvitation => pb::SubscriptionSource::TrialInvitation,
            Source::PurchaseOffer => pb::SubscriptionSource::PurchaseOffer,
            Source::ProductKey => pb::SubscriptionSource::ProductKey,
            Source::SelfService => pb::SubscriptionSource::SelfService,
        }
    }
}

stored_enum!(
    /// What a partner-of-record notification reports.
    NotificationKind {
        Created => "SUBSCRIPTION_CREATED",
        LicenseCountChanged => "LICENSE_COUNT_CHANGED",
        Converted => "TRIAL_CONVERTED",
        Cancelled => "SUBSCRIPTION_CANCELLED",
        Expired => "SUBSCRIPTION_EXPIRED",
    }
);

impl NotificationKind {
    pub fn to_pb(self) -> pb::NotificationKind {
        match self {
            NotificationKind::Created => pb::NotificationKind::SubscriptionCreated,
            NotificationKind::LicenseCountChanged => pb::NotificationKind::LicenseCountChanged,
            NotificationKind::Converted => pb::NotificationKind::TrialConverted,
            NotificationKind::Cancelled => pb::NotificationKind::SubscriptionCancelled,
            NotificationKind::Expired => pb::NotificationKind::SubscriptionExpired,
        }
    }
}
