//! The feed: messages the service publishes to the accounts concerned, each on its own
//! import `natster.global-events.<kind>`.

/// The kinds of feed message (the last subject token).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum FeedKind {
    /// A catalog server's heartbeat, to every account the catalog is shared with.
    Heartbeat,
    /// A catalog came online, to its owner and every account it is shared with.
    CatalogOnline,
    /// A catalog went offline, to the same accounts.
    CatalogOffline,
    /// A share began, to its target and its owner.
    CatalogShared,
    /// A share ended, to its target and its owner.
    CatalogUnshared,
}

impl FeedKind {
    /// Every kind.
    pub const ALL: [FeedKind; 5] = [
        FeedKind::Heartbeat,
        FeedKind::CatalogOnline,
        FeedKind::CatalogOffline,
        FeedKind::CatalogShared,
        FeedKind::CatalogUnshared,
    ];

    /// The kind's name on the wire.
    pub fn as_str(self) -> &'static str {
        match self {
            FeedKind::Heartbeat => "heartbeat",
            FeedKind::CatalogOnline => "catalog_online",
            FeedKind::CatalogOffline => "catalog_offline",
            FeedKind::CatalogShared => "catalog_shared",
            FeedKind::CatalogUnshared => "catalog_unshared",
        }
    }

    /// The kind named `name`.
    pub fn parse(name: &str) -> Option<FeedKind> {
        Self::ALL.into_iter().find(|kind| kind.as_str() == name)
    }
}

/// Subject of `kind` in `account`'s feed, as the service publishes it (the account's import
/// maps it to `natster.global-events.<kind>`).
pub fn feed_subject(account: &str, kind: FeedKind) -> String {
    format!("{account}.{}.{}", super::FEED_PREFIX, kind.as_str())
}
