//! Input rules shared by the API and `decide`.

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

#[cfg(test)]
mod tests {
    use super::*;

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
