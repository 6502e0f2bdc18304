//! Input rules shared by the API and `decide`: catalog names, OAuth ids, account keys.

/// Longest catalog name accepted.
pub const MAX_CATALOG_NAME: usize = 64;

/// Why a catalog name is refused, as one sentence; `None` when it is valid.
///
/// Names are `^[A-Za-z0-9]+$`, 1–64 characters, and not `none` (the subject token that
/// means "no catalog").
pub fn catalog_name_problem(name: &str) -> Option<&'static str> {
    if name.is_empty() || name.len() > MAX_CATALOG_NAME {
        Some("a catalog name has 1 to 64 characters")
    } else if !name.bytes().all(|b| b.is_ascii_alphanumeric()) {
        Some("a catalog name has only letters and digits")
    } else if name.eq_ignore_ascii_case(super::NONE) {
        Some("\"none\" is reserved and cannot name a catalog")
    } else {
        None
    }
}

/// Longest OAuth id accepted, in characters.
pub const MAX_OAUTH_ID: usize = 256;

/// Why an OAuth id is refused, as one sentence; `None` when it has 1 to 256 characters.
pub fn oauth_id_problem(oauth_id: &str) -> Option<&'static str> {
    if oauth_id.is_empty() || oauth_id.chars().count() > MAX_OAUTH_ID {
        Some("an OAuth id has 1 to 256 characters")
    } else {
        None
    }
}

/// Returns true when `key` is a well-formed account public key (`A…`, checksum valid), as the
/// original's `nkeys.IsValidPublicAccountKey` checks it: the curve point is not decoded (that
/// costs more than the rest of a request and proves nothing the server has not).
///
/// The service uses this on the first subject token of every request: the export's token
/// position makes the server put the importer's key there, but subjects published inside the
/// service's own account are not rewritten, so the shape is still checked.
pub fn is_account_public_key(key: &str) -> bool {
    key.len() == 56
        && key.starts_with('A')
        && nkeys::from_public_key(key).is_ok_and(|(prefix, _)| {
            nkeys::KeyPairType::from(prefix) == nkeys::KeyPairType::Account
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn account_keys_are_recognised() {
        let account = nkeys::KeyPair::new_account();
        assert!(is_account_public_key(&account.public_key()));
        let user = nkeys::KeyPair::new_user();
        assert!(!is_account_public_key(&user.public_key()));
        let mut broken = account.public_key();
        broken.replace_range(10..11, if &broken[10..11] == "A" { "B" } else { "A" });
        assert!(!is_account_public_key(&broken));
        assert!(!is_account_public_key("none"));
        assert!(!is_account_public_key(""));
    }

    #[test]
    fn catalog_names() {
        for good in ["a", "Movies2024", &"x".repeat(64)] {
            assert_eq!(catalog_name_problem(good), None, "{good}");
        }
        for bad in [
            "",
            "a.b",
            "a*",
            "a>",
            "a b",
            "café",
            "none",
            "NONE",
            &"x".repeat(65),
            "a-b",
        ] {
            assert!(catalog_name_problem(bad).is_some(), "{bad}");
        }
    }
}
