//! Which OAuth id each account is bound to, folded from `context_bound` events: an account has
//! at most one OAuth id and an OAuth id at most one account, so binding either side again
//! unbinds what it was bound to. `decide` records what a binding replaces in its event
//! (`previous_oauth_id`, `previous_account`), which is how the projections unbind it too.

use std::collections::HashMap;

/// The current bindings, both ways.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Bindings {
    by_account: HashMap<String, String>,
    by_oauth_id: HashMap<String, String>,
}

impl Bindings {
    /// The OAuth id `account` is bound to.
    pub fn oauth_id_of(&self, account: &str) -> Option<&str> {
        self.by_account.get(account).map(String::as_str)
    }

    /// The account `oauth_id` is bound to.
    pub fn account_of(&self, oauth_id: &str) -> Option<&str> {
        self.by_oauth_id.get(oauth_id).map(String::as_str)
    }

    /// Binds `account` to `oauth_id`, unbinding the account's previous OAuth id and the OAuth
    /// id's previous account.
    pub fn bind(&mut self, account: &str, oauth_id: &str) {
        if let Some(old_id) = self.by_account.remove(account) {
            self.by_oauth_id.remove(&old_id);
        }
        if let Some(old_account) = self.by_oauth_id.remove(oauth_id) {
            self.by_account.remove(&old_account);
        }
        self.by_account
            .insert(account.to_string(), oauth_id.to_string());
        self.by_oauth_id
            .insert(oauth_id.to_string(), account.to_string());
    }
}

#[cfg(test)]
mod tests {
    use super::Bindings;

    #[test]
    fn rebinding_either_side_unbinds_what_it_replaced() {
        let mut bindings = Bindings::default();
        bindings.bind("A", "u1");
        bindings.bind("A", "u2");
        assert_eq!(bindings.account_of("u1"), None);
        assert_eq!(bindings.oauth_id_of("A"), Some("u2"));
        bindings.bind("B", "u2");
        assert_eq!(bindings.oauth_id_of("A"), None);
        assert_eq!(bindings.account_of("u2"), Some("B"));
        bindings.bind("B", "u2");
        assert_eq!(bindings.oauth_id_of("B"), Some("u2"));
    }
}
