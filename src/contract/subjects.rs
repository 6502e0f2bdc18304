//! Subjects, headers and resource names that other accounts rely on, and the imports a
//! client account needs (what `bootstrap` writes into every caller's account JWT).

/// Name under which the service registers for `$SRV` discovery (and its default queue group).
pub const SERVICE_NAME: &str = "natster-global";
/// The importer's subject prefix of the API (`natster.global.<op>`).
pub const API_PREFIX: &str = "natster.global";
/// The importer's subject prefix of the feed (`natster.global-events.<kind>`).
pub const FEED_PREFIX: &str = "natster.global-events";
/// The importer's subject of the own-record direct get.
pub const OWN_RECORD_SUBJECT: &str = "natster.projections.account";
/// The importer's subject of own-record updates.
pub const OWN_RECORD_UPDATES_SUBJECT: &str = "natster.projections.account.updates";
/// The account projection's bucket, whose direct-get subject the service exports.
pub const PROJ_ACCOUNT_BUCKET: &str = "PROJ_ACCOUNT";
/// Where `PROJ_ACCOUNT` republishes each update (`.<account key>` appended).
pub const ACCOUNT_UPDATES_PREFIX: &str = "natster.projections.account";

/// Request header: answer only once the read models have applied this stream sequence.
pub const MIN_SEQ_HEADER: &str = "Natster-Min-Seq";
/// Request header of `events.put`: retries with the same id append once.
pub const MSG_ID_HEADER: &str = "Nats-Msg-Id";
/// Header of an event appended under a caller's idempotency key: the fingerprint of the
/// request it answers, so a retry can be told from a different request reusing the key.
pub const REQUEST_FINGERPRINT_HEADER: &str = "Natster-Request-Fingerprint";

/// Whether an export or import is of a service (request/reply) or a stream.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ImportKind {
    Service,
    Stream,
}

/// One subject the service account exports, and how a caller account imports it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClientImport {
    /// The export's (and the import's) name.
    pub name: &'static str,
    pub kind: ImportKind,
    /// The exported subject, with `*` where the importer's account key goes.
    pub export: String,
    /// The token (1-based) of `export` that must be the importer's own key; `None` for
    /// subjects that carry no account data.
    pub account_token_position: Option<u32>,
    /// The subject the importer uses locally.
    pub local: &'static str,
    /// Replies stream back in several messages (`$SRV` discovery answers from each instance).
    pub streamed_replies: bool,
}

impl ClientImport {
    /// The exporter-side subject account `key` imports: `export` with its key in place.
    pub fn subject_for(&self, key: &str) -> String {
        match self.account_token_position {
            Some(position) => self
                .export
                .split('.')
                .enumerate()
                .map(|(i, token)| {
                    if i + 1 == position as usize {
                        key
                    } else {
                        token
                    }
                })
                .collect::<Vec<_>>()
                .join("."),
            None => self.export.clone(),
        }
    }
}

/// What the service account exports and every caller account imports: the API and the feed
/// with the caller's key at token 1, the caller's own projection record (direct get, token 8)
/// and its updates (token 4), and micro-service discovery.
pub fn client_imports() -> Vec<ClientImport> {
    let own_record = format!(
        "$JS.API.DIRECT.GET.KV_{b}.$KV.{b}.*",
        b = PROJ_ACCOUNT_BUCKET
    );
    vec![
        ClientImport {
            name: "natster-global",
            kind: ImportKind::Service,
            export: format!("*.{API_PREFIX}.>"),
            account_token_position: Some(1),
            local: "natster.global.>",
            streamed_replies: false,
        },
        ClientImport {
            name: "natster-global-events",
            kind: ImportKind::Stream,
            export: format!("*.{FEED_PREFIX}.>"),
            account_token_position: Some(1),
            local: "natster.global-events.>",
            streamed_replies: false,
        },
        ClientImport {
            name: "natster-own-record",
            kind: ImportKind::Service,
            export: own_record,
            account_token_position: Some(8),
            local: OWN_RECORD_SUBJECT,
            streamed_replies: false,
        },
        ClientImport {
            name: "natster-own-record-updates",
            kind: ImportKind::Stream,
            export: format!("{ACCOUNT_UPDATES_PREFIX}.*"),
            account_token_position: Some(4),
            local: OWN_RECORD_UPDATES_SUBJECT,
            streamed_replies: false,
        },
        ClientImport {
            name: "natster-discovery",
            kind: ImportKind::Service,
            export: "$SRV.>".into(),
            account_token_position: None,
            local: "$SRV.>",
            streamed_replies: true,
        },
    ]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_import_names_the_importers_own_key() {
        let imports = client_imports();
        let subjects: Vec<String> = imports.iter().map(|i| i.subject_for("AKEY")).collect();
        assert_eq!(
            subjects,
            [
                "AKEY.natster.global.>",
                "AKEY.natster.global-events.>",
                "$JS.API.DIRECT.GET.KV_PROJ_ACCOUNT.$KV.PROJ_ACCOUNT.AKEY",
                "natster.projections.account.AKEY",
                "$SRV.>",
            ]
        );
    }
}
