use super::*;

#[test]
fn the_cli_is_well_formed() {
    use clap::CommandFactory;
    Cli::command().debug_assert();
}

#[test]
fn durations_parse_with_units() {
    assert_eq!(parse_duration("5s"), Ok(Duration::from_secs(5)));
    assert_eq!(parse_duration("3m"), Ok(Duration::from_secs(180)));
    assert!(parse_duration("five").is_err());
    assert_eq!(parse_online_ttl("3m"), Ok(Duration::from_secs(180)));
    assert!(parse_online_ttl("500ms").is_err());
    assert!(parse_online_ttl("1500ms").is_err());
}

#[test]
fn explicit_connection_settings_beat_the_context() {
    let context = nats_context::NatsContext {
        name: "prod".into(),
        url: Some("nats://from-context:4222".into()),
        creds: Some("/ctx.creds".into()),
    };
    let mut args = ConnectArgs {
        nats_url: None,
        creds: None,
        context: Some("prod".into()),
        allow_insecure_files: false,
        tls_ca_file: None,
    };
    let from_context = args.nats_config_with("t", context.clone());
    assert_eq!(from_context.url, "nats://from-context:4222");
    assert!(
        matches!(from_context.auth, NatsAuth::CredsFile(ref p) if p.to_str() == Some("/ctx.creds"))
    );
    args.nats_url = Some("nats://flag:4222".into());
    args.creds = Some("/flag.creds".into());
    let explicit = args.nats_config_with("t", context);
    assert_eq!(explicit.url, "nats://flag:4222");
    assert!(
        matches!(explicit.auth, NatsAuth::CredsFile(ref p) if p.to_str() == Some("/flag.creds"))
    );
    let none = ConnectArgs {
        nats_url: None,
        creds: None,
        context: None,
        allow_insecure_files: false,
        tls_ca_file: None,
    }
    .nats_config_with("t", Default::default());
    assert_eq!(none.url, DEFAULT_NATS_URL);
}

#[test]
fn users_split_on_commas() {
    let cli = Cli::try_parse_from([
        "natster-global",
        "bootstrap",
        "--out",
        "x",
        "--users",
        "a,b,c",
    ])
    .unwrap();
    let Command::Bootstrap(args) = cli.command else {
        panic!("bootstrap")
    };
    assert_eq!(args.users, ["a", "b", "c"]);
}
