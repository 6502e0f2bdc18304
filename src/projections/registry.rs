//! The one list of projections: what the service runs, what `/readyz` and the metrics watch,
//! what `projections status` shows and `projections rebuild` rebuilds.

use super::Projection;
use super::{accounts::Accounts, catalogs::Catalogs, oauth::OAuthIndex, online::Online};

/// A projection, by name.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ProjectionName {
    Accounts,
    Catalogs,
    OAuth,
    Online,
}

/// The stream a projection applies.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SourceStream {
    /// `NATSTER_EVENTS`, the event log.
    Events,
    /// `NATSTER_ONLINE`, the heartbeats.
    Online,
}

impl ProjectionName {
    /// Every projection.
    pub const ALL: [ProjectionName; 4] = [
        ProjectionName::Accounts,
        ProjectionName::Catalogs,
        ProjectionName::OAuth,
        ProjectionName::Online,
    ];

    /// The projection's name (metric label, `PROJ_STATS` keys, CLI).
    pub fn as_str(self) -> &'static str {
        match self {
            ProjectionName::Accounts => Accounts::NAME,
            ProjectionName::Catalogs => Catalogs::NAME,
            ProjectionName::OAuth => OAuthIndex::NAME,
            ProjectionName::Online => Online::NAME,
        }
    }

    /// The projection named `name`.
    pub fn parse(name: &str) -> Option<ProjectionName> {
        Self::ALL.into_iter().find(|p| p.as_str() == name)
    }

    /// Every projection's name.
    pub fn names() -> [&'static str; 4] {
        Self::ALL.map(Self::as_str)
    }

    /// The stream it applies.
    pub fn source(self) -> SourceStream {
        match self {
            ProjectionName::Online => SourceStream::Online,
            _ => SourceStream::Events,
        }
    }

    /// Whether `projections rebuild` can rebuild it from its stream (the heartbeat stream
    /// keeps only the latest message per catalog, so the online model cannot be replayed).
    pub fn rebuildable(self) -> bool {
        self.source() == SourceStream::Events
    }
}
