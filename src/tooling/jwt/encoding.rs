//! Signed JWT encoding as nats-server expects it: header `{"typ":"JWT","alg":"ed25519-nkey"}`,
//! base64url (no padding) parts, ed25519 signature by the issuer's nkey over `header.claims`.

use data_encoding::{BASE32_NOPAD, BASE64URL_NOPAD};
use serde::{de::DeserializeOwned, Serialize};
use sha2::{Digest, Sha512_256};
use std::time::{SystemTime, UNIX_EPOCH};

const HEADER: &str = r#"{"typ":"JWT","alg":"ed25519-nkey"}"#;

/// Why a JWT could not be minted or read.
#[derive(Debug, thiserror::Error)]
pub enum JwtError {
    #[error("a JWT has three dot-separated parts")]
    Shape,
    #[error("JWT part is not base64url: {0}")]
    Encoding(#[from] data_encoding::DecodeError),
    #[error("JWT header or claims are not the expected JSON: {0}")]
    Json(#[from] serde_json::Error),
    #[error("unsupported JWT header (want ed25519-nkey)")]
    Header,
    #[error("JWT signature does not verify against its issuer")]
    Signature,
    #[error("nkey error: {0}")]
    Key(#[from] nkeys::error::Error),
}

/// Signs `claims` with `issuer`, filling `iss`, `iat` (now) and `jti`.
///
/// `jti` is base32 of SHA-512/256 over the claims serialized with an empty `jti`, as nats-io/jwt
/// does; the server only needs it to be unique.
pub fn encode<N: Serialize + Clone>(
    claims: &super::claims::Claims<N>,
    issuer: &nkeys::KeyPair,
) -> Result<String, JwtError> {
    let mut claims = claims.clone();
    claims.iss = issuer.public_key();
    claims.iat = unix_now();
    claims.jti = String::new();
    let digest = Sha512_256::digest(serde_json::to_vec(&claims)?);
    claims.jti = BASE32_NOPAD.encode(&digest);
    let signing_input = format!(
        "{}.{}",
        BASE64URL_NOPAD.encode(HEADER.as_bytes()),
        BASE64URL_NOPAD.encode(&serde_json::to_vec(&claims)?)
    );
    let signature = issuer.sign(signing_input.as_bytes())?;
    Ok(format!(
        "{signing_input}.{}",
        BASE64URL_NOPAD.encode(&signature)
    ))
}

/// Decodes a JWT and checks its signature against the public key in its `iss` claim.
pub fn decode<T: DeserializeOwned>(jwt: &str) -> Result<T, JwtError> {
    let parts: Vec<&str> = jwt.trim().split('.').collect();
    let [header, claims, signature] = parts.as_slice() else {
        return Err(JwtError::Shape);
    };
    let header_json: serde_json::Value =
        serde_json::from_slice(&BASE64URL_NOPAD.decode(header.as_bytes())?)?;
    if header_json.get("alg").and_then(|a| a.as_str()) != Some("ed25519-nkey") {
        return Err(JwtError::Header);
    }
    let claims_bytes = BASE64URL_NOPAD.decode(claims.as_bytes())?;
    let raw: serde_json::Value = serde_json::from_slice(&claims_bytes)?;
    let issuer = raw.get("iss").and_then(|v| v.as_str()).unwrap_or_default();
    let issuer = nkeys::KeyPair::from_public_key(issuer)?;
    let signature = BASE64URL_NOPAD.decode(signature.as_bytes())?;
    issuer
        .verify(format!("{header}.{claims}").as_bytes(), &signature)
        .map_err(|_| JwtError::Signature)?;
    Ok(serde_json::from_value(raw)?)
}

/// Decodes the claims of a JWT without checking its signature (for display only).
pub fn decode_unverified<T: DeserializeOwned>(jwt: &str) -> Result<T, JwtError> {
    let claims = jwt.trim().split('.').nth(1).ok_or(JwtError::Shape)?;
    Ok(serde_json::from_slice(
        &BASE64URL_NOPAD.decode(claims.as_bytes())?,
    )?)
}

fn unix_now() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tooling::jwt::claims::*;

    #[test]
    fn operator_jwt_round_trips_and_verifies() {
        let operator = nkeys::KeyPair::new_operator();
        let system = nkeys::KeyPair::new_account();
        let claims = OperatorClaims::new("op", &operator.public_key(), &system.public_key());
        let jwt = encode(&claims, &operator).unwrap();
        let decoded: OperatorClaims = decode(&jwt).unwrap();
        assert_eq!(decoded.iss, operator.public_key());
        assert_eq!(decoded.sub, operator.public_key());
        assert_eq!(decoded.nats.kind, "operator");
        assert_eq!(decoded.nats.system_account, system.public_key());
        assert_eq!(decoded.jti.len(), 52, "base32 of a 32-byte digest");
        assert!(decoded.iat > 1_700_000_000);
    }

    #[test]
    fn account_jwt_carries_exports_imports_limits_and_revocations() {
        let operator = nkeys::KeyPair::new_operator();
        let account = nkeys::KeyPair::new_account();
        let exporter = nkeys::KeyPair::new_account();
        let mut claims = AccountClaims::new("acc", &account.public_key());
        claims.nats.limits = AccountLimits::with_jetstream();
        claims
            .nats
            .exports
            .push(Export::service("svc", "*.natster.global.>", Some(1)));
        claims
            .nats
            .exports
            .push(Export::stream("feed", "*.feed.>", Some(1)));
        claims.nats.imports.push(Import::new(
            ExportType::Service,
            "svc",
            &exporter.public_key(),
            &format!("{}.natster.global.>", account.public_key()),
            "natster.global.>",
        ));
        claims.revoke("UABC", 42);
        let jwt = encode(&claims, &operator).unwrap();
        let decoded: AccountClaims = decode(&jwt).unwrap();
        assert_eq!(decoded.iss, operator.public_key());
        assert_eq!(decoded.nats.exports, claims.nats.exports);
        assert_eq!(decoded.nats.imports, claims.nats.imports);
        assert_eq!(decoded.nats.revocations.get("UABC"), Some(&42));
        assert!(decoded.nats.limits.jetstream_enabled());
        let raw: serde_json::Value = decode_unverified(&jwt).unwrap();
        assert_eq!(raw["nats"]["exports"][0]["response_type"], "Singleton");
        assert_eq!(raw["nats"]["exports"][0]["account_token_position"], 1);
        assert_eq!(raw["nats"]["exports"][1]["type"], "stream");
        assert!(raw["nats"]["exports"][1].get("response_type").is_none());
        assert_eq!(raw["nats"]["limits"]["disk_storage"], -1);
    }

    #[test]
    fn user_jwt_is_signed_by_its_account() {
        let account = nkeys::KeyPair::new_account();
        let user = nkeys::KeyPair::new_user();
        let jwt = encode(&UserClaims::new("u", &user.public_key()), &account).unwrap();
        let decoded: UserClaims = decode(&jwt).unwrap();
        assert_eq!(decoded.iss, account.public_key());
        assert_eq!(decoded.nats.kind, "user");
        assert_eq!(decoded.nats.subs, -1);
    }

    #[test]
    fn tampered_claims_fail_verification() {
        let operator = nkeys::KeyPair::new_operator();
        let account = nkeys::KeyPair::new_account();
        let jwt = encode(&AccountClaims::new("acc", &account.public_key()), &operator).unwrap();
        let mut parts: Vec<String> = jwt.split('.').map(String::from).collect();
        let mut claims: serde_json::Value =
            serde_json::from_slice(&BASE64URL_NOPAD.decode(parts[1].as_bytes()).unwrap()).unwrap();
        claims["name"] = "evil".into();
        parts[1] = BASE64URL_NOPAD.encode(&serde_json::to_vec(&claims).unwrap());
        let forged = parts.join(".");
        assert!(matches!(
            decode::<AccountClaims>(&forged),
            Err(JwtError::Signature)
        ));
        assert!(matches!(
            decode::<AccountClaims>("a.b"),
            Err(JwtError::Shape)
        ));
    }

    #[test]
    fn a_jwt_signed_by_another_key_than_its_issuer_fails() {
        let operator = nkeys::KeyPair::new_operator();
        let other = nkeys::KeyPair::new_operator();
        let account = nkeys::KeyPair::new_account();
        let jwt = encode(&AccountClaims::new("acc", &account.public_key()), &operator).unwrap();
        let mut parts: Vec<&str> = jwt.split('.').collect();
        let resigned = other
            .sign(format!("{}.{}", parts[0], parts[1]).as_bytes())
            .unwrap();
        let sig = BASE64URL_NOPAD.encode(&resigned);
        parts[2] = &sig;
        assert!(matches!(
            decode::<AccountClaims>(&parts.join(".")),
            Err(JwtError::Signature)
        ));
    }
}
