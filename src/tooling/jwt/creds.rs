//! `.creds` files: a user JWT and its nkey seed in the armoured format the NATS clients read.

/// A user JWT with the seed of the user's key.
#[derive(Clone)]
pub struct Creds {
    pub jwt: String,
    pub seed: String,
}

impl std::fmt::Debug for Creds {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Creds")
            .field("jwt", &self.jwt)
            .field("seed", &"<redacted>")
            .finish()
    }
}

/// Formats a creds file exactly as `nsc` writes it.
pub fn format_creds(jwt: &str, seed: &str) -> String {
    format!(
        "-----BEGIN NATS USER JWT-----\n{jwt}\n------END NATS USER JWT------\n\n\
************************* IMPORTANT *************************\n\
NKEY Seed printed below can be used to sign and prove identity.\n\
NKEYs are sensitive and should be treated as secrets.\n\n\
-----BEGIN USER NKEY SEED-----\n{seed}\n------END USER NKEY SEED------\n\n\
*************************************************************\n"
    )
}

/// Reads the JWT and seed out of a creds file's text; `None` when either block is missing.
pub fn parse_creds(text: &str) -> Option<Creds> {
    fn block(text: &str, begin: &str) -> Option<String> {
        let mut lines = text.lines().skip_while(|l| !l.contains(begin));
        lines.next()?;
        lines
            .map(str::trim)
            .find(|l| !l.is_empty())
            .filter(|l| !l.starts_with("---"))
            .map(String::from)
    }
    Some(Creds {
        jwt: block(text, "BEGIN NATS USER JWT")?,
        seed: block(text, "BEGIN USER NKEY SEED")?,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn creds_round_trip_and_load_in_async_nats() {
        let account = nkeys::KeyPair::new_account();
        let user = nkeys::KeyPair::new_user();
        let jwt = crate::tooling::jwt::encode(
            &crate::tooling::jwt::UserClaims::new("u", &user.public_key()),
            &account,
        )
        .unwrap();
        let text = format_creds(&jwt, &user.seed().unwrap());
        let parsed = parse_creds(&text).unwrap();
        assert_eq!(parsed.jwt, jwt);
        assert_eq!(parsed.seed, user.seed().unwrap());
        assert!(!format!("{parsed:?}").contains(&parsed.seed));
        // The client library accepts the same text.
        async_nats::ConnectOptions::with_credentials(&text).expect("async-nats parses our creds");
        assert!(parse_creds("nothing here").is_none());
    }
}
