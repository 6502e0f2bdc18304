//! The op table: every op of the API with its name, whether it writes (rate limited per
//! account), its request type and its reply type. The service's handlers, the typed client,
//! `natster-global call`, the JSON Schemas and the tests all take ops from here.
//!
//! Each row makes a variant of [`Op`] (what travels at run time: endpoint names, metric
//! labels) and a unit type in [`op`] implementing [`Operation`] (what ties a request type to
//! its reply type at compile time).

use super::body::{CatalogName, NoPayload, OAuthId, RequestBody};
use super::messages::{
    ContextReply, EmptyReply, EventsPutReply, EventsPutRequest, HeartbeatRequest, NameValidation,
    OtcClaimRequest, OtcGenerateReply, ShareSummary, StatsReply, WhoamiReply,
};
use crate::model::NatsterContext;
use serde::{de::DeserializeOwned, Serialize};

/// One op of the API, as a type: what it takes and what it answers.
pub trait Operation: Send + Sync + 'static {
    /// The op's row in the table.
    const OP: Op;
    /// The request payload.
    type Request: RequestBody;
    /// The reply's `data` on success.
    type Reply: Serialize + DeserializeOwned + schemars::JsonSchema + Send + Sync + 'static;
}

/// Something done once per op type, in table order (see [`visit_ops`]).
pub trait OpVisitor {
    fn visit<O: Operation>(&mut self);
}

macro_rules! op_table {
    ($(
        $(#[$doc:meta])*
        $ty:ident = $name:literal, writes: $writes:literal, request: $request:ty, reply: $reply:ty;
    )*) => {
        /// Every op the service serves. Importers send `natster.global.<name>`; the service
        /// receives `<CALLER_ACCOUNT>.natster.global.<name>`. An op not listed here gets "no
        /// responders", as NATS services do.
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
        pub enum Op {
            $($(#[$doc])* $ty,)*
        }

        impl Op {
            /// Every op, in table order.
            pub const ALL: &'static [Op] = &[$(Op::$ty,)*];

            /// The op's name: the subject tokens after `natster.global.`.
            pub fn name(self) -> &'static str {
                match self {
                    $(Op::$ty => $name,)*
                }
            }

            /// Whether the op writes (and so is rate limited per account).
            pub fn writes(self) -> bool {
                match self {
                    $(Op::$ty => $writes,)*
                }
            }
        }

        /// One unit type per op, for typed requests and replies.
        pub mod op {
            use super::*;
            $(
                $(#[$doc])*
                #[derive(Debug, Clone, Copy, PartialEq, Eq)]
                pub struct $ty;

                impl Operation for $ty {
                    const OP: Op = Op::$ty;
                    type Request = $request;
                    type Reply = $reply;
                }
            )*
        }

        /// Calls `visitor` once with every op type, in table order.
        pub fn visit_ops(visitor: &mut impl OpVisitor) {
            $(visitor.visit::<op::$ty>();)*
        }
    };
}

op_table! {
    /// Append an event decided against the current state; reply `{"seq": N}`.
    EventsPut = "events.put", writes: true, request: EventsPutRequest, reply: EventsPutReply;
    /// A catalog server says its catalog is up (or stops); `{}` when a reply is asked for.
    HeartbeatsPut = "heartbeats.put", writes: false, request: HeartbeatRequest, reply: EmptyReply;
    /// Community totals.
    Stats = "stats", writes: false, request: NoPayload, reply: StatsReply;
    /// The caller's shares, outgoing then incoming.
    MyShares = "my.shares", writes: false, request: NoPayload, reply: Vec<ShareSummary>;
    /// A one-time code binding the caller's context to a web identity.
    OtcGenerate = "otc.generate", writes: true, request: NatsterContext, reply: OtcGenerateReply;
    /// The website claims a code (web accounts only); reply: the bound context.
    OtcClaim = "otc.claim", writes: true, request: OtcClaimRequest, reply: NatsterContext;
    /// The caller as the service knows it; 404 before it initialised.
    Whoami = "whoami", writes: false, request: NoPayload, reply: WhoamiReply;
    /// The context bound to an OAuth id, with credentials (web accounts only).
    ContextGet = "context.get", writes: false, request: OAuthId, reply: ContextReply;
    /// Whether the caller may share a catalog under a name.
    CatalogsValidateName = "catalogs.validatename", writes: false, request: CatalogName, reply: NameValidation;
}

impl Op {
    /// The op named `name`, if the service serves it.
    pub fn parse(name: &str) -> Option<Op> {
        Op::ALL.iter().copied().find(|op| op.name() == name)
    }

    /// The subject the service receives the op on (any caller account in token 1).
    pub fn service_subject(self) -> String {
        format!("*.{}.{}", super::API_PREFIX, self.name())
    }

    /// The subject an importing account sends the op to.
    pub fn importer_subject(self) -> String {
        format!("{}.{}", super::API_PREFIX, self.name())
    }

    /// The name of the op's micro-service endpoint (`$SRV` discovery): dots become `_`.
    pub fn endpoint_name(self) -> String {
        self.name().replace('.', "_")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_table_lists_each_op_once_with_its_type() {
        struct Names(Vec<Op>);
        impl OpVisitor for Names {
            fn visit<O: Operation>(&mut self) {
                self.0.push(O::OP);
            }
        }
        let mut visited = Names(Vec::new());
        visit_ops(&mut visited);
        assert_eq!(visited.0, Op::ALL);
        for op in Op::ALL {
            assert_eq!(Op::parse(op.name()), Some(*op));
        }
        assert_eq!(Op::parse("nope"), None);
        let writing: Vec<&str> = Op::ALL
            .iter()
            .filter(|o| o.writes())
            .map(|o| o.name())
            .collect();
        assert_eq!(writing, ["events.put", "otc.generate", "otc.claim"]);
    }
}
