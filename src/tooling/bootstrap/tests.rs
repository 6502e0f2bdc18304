use super::*;
use std::os::unix::fs::PermissionsExt;

fn users(names: &[&str]) -> Vec<String> {
    names.iter().map(|s| s.to_string()).collect()
}

#[test]
fn generated_world_has_the_service_exports_and_caller_imports() {
    let dir = tempfile::tempdir().unwrap();
    let world = World::generate(dir.path(), &users(&["alice", "bob"])).unwrap();
    let service = world.account(NATSTER).unwrap();
    assert!(service.claims.nats.limits.jetstream_enabled());
    let api = &service.claims.nats.exports[0];
    assert_eq!(api.subject, "*.natster.global.>");
    assert_eq!(api.account_token_position, Some(1));
    assert_eq!(api.kind, ExportType::Service);
    let feed = &service.claims.nats.exports[1];
    assert_eq!(feed.subject, "*.natster.global-events.>");
    assert_eq!(feed.kind, ExportType::Stream);
    for name in [WEB, HUB, "alice", "bob"] {
        let account = world.account(name).unwrap();
        assert!(!account.claims.nats.limits.jetstream_enabled());
        let key = account.public_key();
        let imports = &account.claims.nats.imports;
        assert_eq!(imports[0].subject, format!("{key}.natster.global.>"));
        assert_eq!(imports[0].local_subject, "natster.global.>");
        assert_eq!(imports[0].account, service.public_key());
        assert_eq!(imports[1].subject, format!("{key}.natster.global-events.>"));
        assert!(imports[2].subject.ends_with(&key));
    }
    assert!(world.account(SYS).unwrap().claims.nats.imports.is_empty());
}

#[test]
fn every_minted_jwt_verifies_against_its_issuer() {
    let dir = tempfile::tempdir().unwrap();
    let world = World::generate(dir.path(), &users(&["alice"])).unwrap();
    let op: OperatorClaims = auth::decode(&world.operator_jwt).unwrap();
    assert_eq!(op.nats.system_account, world.key(SYS).unwrap());
    for account in world.accounts.values() {
        let claims: AccountClaims = auth::decode(&account.jwt).unwrap();
        assert_eq!(claims.iss, world.operator.public_key());
        assert_eq!(claims.sub, account.public_key());
        let user: UserClaims = auth::decode(&account.user_jwt).unwrap();
        assert_eq!(user.iss, account.public_key());
        assert_eq!(user.sub, account.user.public_key());
    }
}

#[test]
fn write_refuses_an_existing_world_without_force_and_load_reads_it_back() {
    let dir = tempfile::tempdir().unwrap();
    let world = World::generate(dir.path(), &users(&["alice"])).unwrap();
    let index = world.write(false).unwrap();
    assert_eq!(
        index.accounts["alice"].public_key,
        world.key("alice").unwrap()
    );
    assert!(matches!(world.write(false), Err(BootstrapError::Exists(_))));
    let again = World::generate(dir.path(), &users(&["carol"])).unwrap();
    again.write(true).unwrap();
    let loaded = World::load(dir.path()).unwrap();
    assert_eq!(loaded.key("carol").unwrap(), again.key("carol").unwrap());
    assert!(loaded.account("alice").is_err());
    assert_eq!(loaded.operator.public_key(), again.operator.public_key());
    for secret in [
        "keys/operator.nk",
        "creds/carol.creds",
        "service.xk",
        "keys/NATSTER.nk",
    ] {
        let mode = fs::metadata(dir.path().join(secret))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600, "{secret}");
    }
    let mode = fs::metadata(dir.path().join("creds"))
        .unwrap()
        .permissions()
        .mode();
    assert_eq!(mode & 0o777, 0o700);
    let conf = fs::read_to_string(dir.path().join("nats-server.conf")).unwrap();
    assert!(conf.contains("resolver: MEMORY"));
    assert!(conf.contains(&again.key(NATSTER).unwrap()));
    assert!(conf.contains("listen: 127.0.0.1:4222"));
    for account in loaded.accounts.values() {
        assert!(
            !conf.contains(&account.key.seed().unwrap()),
            "no seed in the server config"
        );
        assert!(!conf.contains(&account.user.seed().unwrap()));
    }
}

#[test]
fn bad_user_names_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    for bad in ["", "Alice", "web", "natster", "a b", "1x", "a.b"] {
        assert!(
            matches!(
                World::generate(dir.path(), &users(&[bad])),
                Err(BootstrapError::InvalidName(_))
            ),
            "{bad:?}"
        );
    }
    assert!(matches!(
        World::generate(dir.path(), &users(&["a", "a"])),
        Err(BootstrapError::Duplicate(_))
    ));
}
