//! Settings from flags, environment variables and a TOML file, in that precedence.
//!
//! Flags and environment variables are clap's (each flag names its variable). The file
//! (`--config`/`NATSTER_CONFIG`) holds the same settings under the long flag names
//! (`max-in-flight = 512`; `max_in_flight` is accepted too), and fills in only what neither a
//! flag nor the environment set: its values are added as flags and the command line is parsed
//! again, so a value from the file goes through exactly the checks a flag does.

use super::args::Cli;
use clap::parser::ValueSource;
use clap::{CommandFactory, FromArgMatches};
use std::ffi::OsString;
use std::path::Path;

/// A problem with the settings (exit code 2): one line for a value that parses but is not
/// valid, clap's message with its tip and usage for a command line clap cannot parse.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct SettingsError(pub String);

/// What parsing decided.
pub enum Parsed {
    Run(Box<Cli>),
    /// `--help` or `--version`: print this and exit 0.
    Display(String),
}

/// Parses `args` (program name first), applying the config file if one is named.
pub fn parse(args: Vec<OsString>) -> Result<Parsed, SettingsError> {
    let matches = match Cli::command().try_get_matches_from(&args) {
        Ok(matches) => matches,
        Err(error) => return displayed(error, &[]),
    };
    let Some(path) = matches.get_one::<std::path::PathBuf>("config").cloned() else {
        return from_matches(&matches);
    };
    let extra = file_args(&path, &matches)?;
    if extra.is_empty() {
        return from_matches(&matches);
    }
    let mut all = args;
    all.extend(extra.iter().map(OsString::from));
    match Cli::command().try_get_matches_from(&all) {
        Ok(matches) => from_matches(&matches),
        Err(error) => displayed(error, &[path.display().to_string()]),
    }
}

fn from_matches(matches: &clap::ArgMatches) -> Result<Parsed, SettingsError> {
    Cli::from_arg_matches(matches)
        .map(|cli| Parsed::Run(Box::new(cli)))
        .map_err(|e| SettingsError(clap_message(&e)))
}

fn displayed(error: clap::Error, file: &[String]) -> Result<Parsed, SettingsError> {
    use clap::error::ErrorKind;
    match error.kind() {
        ErrorKind::DisplayHelp | ErrorKind::DisplayVersion => {
            Ok(Parsed::Display(error.render().to_string()))
        }
        _ => {
            let message = clap_message(&error);
            Err(SettingsError(match file.first() {
                Some(file) => match message.split_once('\n') {
                    Some((first, rest)) => {
                        format!("{first} (flags, environment or config file {file})\n{rest}")
                    }
                    None => format!("{message} (flags, environment or config file {file})"),
                },
                None => message,
            }))
        }
    }
}

/// clap's whole message (what is wrong, then its tip and usage lines when it has them),
/// without the leading `error: ` that the caller prints.
fn clap_message(error: &clap::Error) -> String {
    let text = error.render().to_string();
    let text = text.trim();
    text.strip_prefix("error: ").unwrap_or(text).to_string()
}

/// The file's settings as flags, leaving out those a flag or variable already set.
fn file_args(path: &Path, matches: &clap::ArgMatches) -> Result<Vec<String>, SettingsError> {
    let shown = path.display();
    let text = std::fs::read_to_string(path)
        .map_err(|e| SettingsError(format!("config file {shown}: {e}")))?;
    let table: toml::Table = text.parse().map_err(|e: toml::de::Error| {
        SettingsError(format!(
            "config file {shown}: {}",
            e.message().lines().next().unwrap_or("not TOML")
        ))
    })?;
    let root = Cli::command();
    let (sub_name, sub_matches) = matches
        .subcommand()
        .ok_or_else(|| SettingsError("no subcommand".into()))?;
    let sub = root
        .find_subcommand(sub_name)
        .expect("matched subcommands exist");
    let mut args = Vec::new();
    for (key, value) in &table {
        let long = key.replace('_', "-");
        let arg = sub
            .get_arguments()
            .chain(root.get_arguments())
            .find(|a| a.get_long() == Some(long.as_str()) && !a.is_positional())
            .filter(|_| !matches!(long.as_str(), "config" | "help" | "version"))
            .ok_or_else(|| {
                SettingsError(format!(
                    "config file {shown}: unknown setting {key:?} for `{sub_name}`"
                ))
            })?;
        let id = arg.get_id().as_str();
        if matches!(
            sub_matches.value_source(id),
            Some(ValueSource::CommandLine | ValueSource::EnvVariable)
        ) {
            continue;
        }
        let takes_value = arg.get_action().takes_values();
        let flag = format!("--{long}");
        let bad = |what: &str| {
            SettingsError(format!(
                "config file {shown}: setting {key:?} must be {what}"
            ))
        };
        match value {
            toml::Value::Boolean(on) if !takes_value => {
                if *on {
                    args.push(flag);
                }
            }
            _ if !takes_value => return Err(bad("true or false")),
            toml::Value::Array(items) => {
                for item in items {
                    args.push(format!(
                        "{flag}={}",
                        scalar(item).ok_or_else(|| bad("a list of strings or numbers"))?
                    ));
                }
            }
            other => args.push(format!(
                "{flag}={}",
                scalar(other).ok_or_else(|| bad("a string, number or boolean"))?
            )),
        }
    }
    Ok(args)
}

fn scalar(value: &toml::Value) -> Option<String> {
    match value {
        toml::Value::String(s) => Some(s.clone()),
        toml::Value::Integer(i) => Some(i.to_string()),
        toml::Value::Float(f) => Some(f.to_string()),
        toml::Value::Boolean(b) => Some(b.to_string()),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cli::args::Command;

    fn write(text: &str) -> tempfile::NamedTempFile {
        let file = tempfile::NamedTempFile::new().unwrap();
        std::fs::write(file.path(), text).unwrap();
        file
    }

    fn serve(args: &[&str]) -> Result<crate::cli::args::ServeArgs, SettingsError> {
        let mut all = vec!["natster-global", "serve"];
        all.extend_from_slice(args);
        match parse(all.into_iter().map(OsString::from).collect())? {
            Parsed::Run(cli) => match cli.command {
                Command::Serve(args) => Ok(args),
                _ => panic!("serve"),
            },
            Parsed::Display(_) => panic!("no help asked"),
        }
    }

    #[test]
    fn the_file_fills_in_what_flags_do_not_set() {
        let file = write(
            "max-in-flight = 7\nmax_request_bytes = 1000\nweb-account = []\nallow-insecure-files = true\nshutdown-timeout = \"3s\"\n",
        );
        let path = file.path().to_str().unwrap();
        let args = serve(&["--config", path, "--max-in-flight", "9"]).unwrap();
        assert_eq!(args.service.max_in_flight, 9, "a flag beats the file");
        assert_eq!(args.service.max_request_bytes, 1000);
        assert!(args.connect.allow_insecure_files);
        assert_eq!(
            args.service.shutdown_timeout,
            std::time::Duration::from_secs(3)
        );
    }

    #[test]
    fn bad_settings_name_themselves() {
        let unknown = write("max-in-fligth = 7\n");
        let error = serve(&["--config", unknown.path().to_str().unwrap()])
            .err()
            .unwrap();
        assert!(
            error.0.contains("unknown setting \"max-in-fligth\""),
            "{error}"
        );
        let invalid = write("replicas = 9\n");
        let error = serve(&["--config", invalid.path().to_str().unwrap()])
            .err()
            .unwrap();
        let first = error.0.lines().next().unwrap_or_default();
        assert!(
            first.contains("--replicas") && first.contains("config file"),
            "the first line names the flag and the file: {error}"
        );
        let not_toml = write("replicas = \n");
        let error = serve(&["--config", not_toml.path().to_str().unwrap()])
            .err()
            .unwrap();
        assert!(error.0.starts_with("config file"), "{error}");
        let flag = serve(&["--replicas", "x"]).err().unwrap();
        assert!(flag.0.contains("--replicas"), "{flag}");
    }
}
