//! Tests of the command line, the settings layers and their bounds.

use super::*;
use std::cell::RefCell;
use std::collections::HashMap;
use std::sync::atomic::{AtomicU32, Ordering};

fn no_env(_: &str) -> Option<String> {
    None
}

fn env_of(pairs: &[(&str, &str)]) -> impl Fn(&str) -> Option<String> {
    let map: HashMap<String, String> = pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
    move |k| map.get(k).cloned()
}

/// A fresh file under the system temp dir, unique per test run.
fn temp_file(contents: &str) -> PathBuf {
    static N: AtomicU32 = AtomicU32::new(0);
    let path = std::env::temp_dir().join(format!(
        "roomcast-config-test-{}-{}.toml",
        std::process::id(),
        N.fetch_add(1, Ordering::Relaxed)
    ));
    std::fs::write(&path, contents).unwrap();
    path
}

fn setting_error(r: Result<Config, CliError>) -> (String, String) {
    match r {
        Err(CliError::Config(ConfigError::Setting { key, problem })) => (key, problem),
        other => panic!("expected a setting error, got {other:?}"),
    }
}

#[test]
fn durations() {
    assert_eq!(parse_duration("500ms"), Ok(Duration::from_millis(500)));
    assert_eq!(parse_duration("10s"), Ok(Duration::from_secs(10)));
    assert_eq!(parse_duration("5m"), Ok(Duration::from_secs(300)));
    assert_eq!(parse_duration("1h"), Ok(Duration::from_secs(3600)));
    assert_eq!(parse_duration("2d"), Ok(Duration::from_secs(172_800)));
    assert_eq!(parse_duration("42"), Ok(Duration::from_secs(42)));
    assert_eq!(parse_duration(" 7s "), Ok(Duration::from_secs(7)));
    assert_eq!(parse_duration("0"), Ok(Duration::ZERO));
    for bad in ["", "s", "-1s", "1.5s", "10x", "10 sec", "ms", "1h30m", "10S", "+5"] {
        assert!(parse_duration(bad).is_err(), "{bad:?} should not parse");
    }
    assert!(parse_duration("18446744073709551615d").unwrap_err().contains("too large"));
    assert!(parse_duration("99999999999999999999999s").is_err());
}

#[test]
fn sizes() {
    assert_eq!(parse_size("65536"), Ok(65536));
    assert_eq!(parse_size("64KiB"), Ok(65536));
    assert_eq!(parse_size("4MiB"), Ok(4 << 20));
    assert_eq!(parse_size("16MiB"), Ok(16 << 20));
    assert_eq!(parse_size("1GiB"), Ok(1 << 30));
    assert_eq!(parse_size("64kib"), Ok(65536));
    assert_eq!(parse_size("64 KiB"), Ok(65536));
    assert_eq!(parse_size("100B"), Ok(100));
    for bad in ["", "KiB", "-1", "1.5MiB", "64KB", "64k", "4 MB", "0x10"] {
        assert!(parse_size(bad).is_err(), "{bad:?} should not parse");
    }
    assert!(parse_size("18446744073709551615GiB").is_err());
}

#[test]
fn bools() {
    for t in ["true", "TRUE", "1", "yes", "on"] {
        assert_eq!(parse_bool(t), Ok(true));
    }
    for f in ["false", "0", "No", "off"] {
        assert_eq!(parse_bool(f), Ok(false));
    }
    assert!(parse_bool("maybe").is_err());
}

#[test]
fn command_is_well_formed() {
    cli_command().debug_assert();
}

#[test]
fn defaults_without_anything() {
    let config = Config::from_args_and_env(&[], &no_env).unwrap();
    assert_eq!(config, Config::default());
    assert_eq!(config.listen, "127.0.0.1:8080".parse().unwrap());
    assert_eq!(config.data, PathBuf::from("./data"));
    assert!(config.threads >= 1);
    assert_eq!(config.max_message_bytes, 65536);
    assert_eq!(config.max_queue_bytes, 4 << 20);
    assert_eq!(config.durability, Durability::Immediate);
    assert_eq!(config.jwt_secret, None);
    Config::default().validate().unwrap();
}

#[test]
fn every_flag_parses() {
    let config = Config::from_args_and_env(
        &[
            "--listen=0.0.0.0:9000",
            "--data=/tmp/rc",
            "--threads=3",
            "--anonymous",
            "--durability=none",
            "--tls-listen=0.0.0.0:9443",
            "--tls-cert=c.pem",
            "--tls-key=k.pem",
            "--max-message-bytes=16KiB",
            "--echo",
            "--jwt-audience=aud",
            "--jwt-issuer=iss",
            "--drain-timeout=2s",
            "--idle-timeout=90s",
            "--ping-interval=30s",
            "--request-timeout=500ms",
            "--send-rate=2.5",
            "--send-burst=7",
            "--max-queue-bytes=1MiB",
            "--max-connections=12",
            "--history-tail=64",
            "--max-replay=10",
            "--dedup-window=2h",
            "--retain-messages=1000",
            "--retain-age=30d",
        ],
        &no_env,
    )
    .unwrap();
    let want = Config {
        listen: "0.0.0.0:9000".parse().unwrap(),
        data: PathBuf::from("/tmp/rc"),
        threads: 3,
        anonymous: true,
        durability: Durability::None,
        tls_listen: Some("0.0.0.0:9443".parse().unwrap()),
        tls_cert: Some(PathBuf::from("c.pem")),
        tls_key: Some(PathBuf::from("k.pem")),
        max_message_bytes: 16384,
        echo: true,
        jwt_audience: Some("aud".into()),
        jwt_issuer: Some("iss".into()),
        jwt_secret: None,
        drain_timeout: Duration::from_secs(2),
        idle_timeout: Duration::from_secs(90),
        ping_interval: Duration::from_secs(30),
        request_timeout: Duration::from_millis(500),
        send_rate: 2.5,
        send_burst: 7,
        max_queue_bytes: 1 << 20,
        max_connections: 12,
        history_tail: 64,
        max_replay: 10,
        dedup_window: Duration::from_secs(7200),
        retain_messages: Some(1000),
        retain_age: Some(Duration::from_secs(30 * 86_400)),
        ..Config::default()
    };
    assert_eq!(config, want);
}

#[test]
fn bool_flags_take_an_optional_value() {
    let on = Config::from_args_and_env(&["--anonymous", "--echo=yes"], &no_env).unwrap();
    assert!(on.anonymous && on.echo);
    let env = env_of(&[("ROOMCAST_ANONYMOUS", "true")]);
    let off = Config::from_args_and_env(&["--anonymous=false"], &env).unwrap();
    assert!(!off.anonymous, "an explicit flag beats the environment");
    // Without `=`, a following word is not taken as the flag's value.
    assert!(matches!(Config::from_args_and_env(&["--anonymous", "false"], &no_env), Err(CliError::Usage(_))));
}

#[test]
fn precedence_flag_over_env_over_file_over_default() {
    let file = temp_file(
        "listen = \"127.0.0.1:1001\"\n\
         threads = 5\n\
         max-message-bytes = \"8KiB\"\n\
         idle_timeout = 120\n\
         echo = true\n",
    );
    let file_arg = format!("--config={}", file.display());
    let env = env_of(&[("ROOMCAST_LISTEN", "127.0.0.1:1002"), ("ROOMCAST_THREADS", "6")]);

    // File alone.
    let c = Config::from_args_and_env(&[&file_arg], &no_env).unwrap();
    assert_eq!(c.listen.port(), 1001);
    assert_eq!(c.threads, 5);
    assert_eq!(c.max_message_bytes, 8192);
    assert_eq!(c.idle_timeout, Duration::from_secs(120));
    assert!(c.echo);
    assert_eq!(c.history_tail, 1024, "untouched settings keep the default");

    // Environment beats the file; the file still fills the rest.
    let c = Config::from_args_and_env(&[&file_arg], &env).unwrap();
    assert_eq!(c.listen.port(), 1002);
    assert_eq!(c.threads, 6);
    assert_eq!(c.max_message_bytes, 8192);

    // A flag beats both.
    let c = Config::from_args_and_env(&[&file_arg, "--listen", "127.0.0.1:1003"], &env).unwrap();
    assert_eq!(c.listen.port(), 1003);
    assert_eq!(c.threads, 6);

    // The file can also be named by the environment.
    let path = file.display().to_string();
    let env = env_of(&[("ROOMCAST_CONFIG", &path)]);
    let c = Config::from_args_and_env(&[], &env).unwrap();
    assert_eq!(c.threads, 5);

    // An empty variable counts as unset.
    let env = env_of(&[("ROOMCAST_THREADS", "")]);
    let c = Config::from_args_and_env(&[&file_arg], &env).unwrap();
    assert_eq!(c.threads, 5);
    std::fs::remove_file(file).unwrap();
}

/// A JWT secret of the shortest length accepted.
const K32: &str = "kkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkk";

#[test]
fn secret_comes_from_the_environment_only() {
    let long = "s3cret-s3cret-s3cret-s3cret-s3cr";
    let env = env_of(&[("ROOMCAST_JWT_SECRET", long)]);
    let c = Config::from_args_and_env(&[], &env).unwrap();
    assert_eq!(c.jwt_secret.as_ref().map(JwtSecret::expose), Some(long));
    assert!(!format!("{c:?}").contains(long), "Debug hides the secret");
    assert!(matches!(Config::from_args_and_env(&["--jwt-secret=x"], &no_env), Err(CliError::Usage(_))));
    let file = temp_file("jwt-secret = \"x\"\n");
    let (key, problem) = setting_error(Config::from_args_and_env(&[&format!("--config={}", file.display())], &no_env));
    assert_eq!(key, "jwt-secret");
    assert!(problem.contains("unknown key"), "{problem}");
    std::fs::remove_file(file).unwrap();
}

#[test]
fn a_short_secret_is_a_config_error() {
    for short in ["k", "s3cret", &K32[1..]] {
        let env = env_of(&[("ROOMCAST_JWT_SECRET", short)]);
        let (key, problem) = setting_error(Config::from_args_and_env(&[], &env));
        assert_eq!(key, "ROOMCAST_JWT_SECRET");
        assert!(problem.contains("at least 32 bytes") && !problem.contains(short), "{problem}");
        let token = parse_command_line(["roomcast", "token", "--sub", "ann"], &env);
        assert!(
            matches!(token, Err(CliError::Config(ConfigError::Setting { ref key, .. })) if key == "ROOMCAST_JWT_SECRET")
        );
    }
    // An empty one is no secret: the data directory's is used.
    let env = env_of(&[("ROOMCAST_JWT_SECRET", "")]);
    assert_eq!(Config::from_args_and_env(&[], &env).unwrap().jwt_secret, None);
}

#[test]
fn key_files_and_leeway() {
    let c = Config::from_args_and_env(&[], &no_env).unwrap();
    assert_eq!((c.jwt_public_key.as_ref(), c.jwks.as_ref()), (None, None));
    assert_eq!(c.jwt_leeway, Duration::from_secs(30));
    let c = Config::from_args_and_env(&["--jwt-public-key=/k.pem", "--jwks", "/keys.json", "--jwt-leeway=2m"], &no_env)
        .unwrap();
    assert_eq!(c.jwt_public_key, Some(PathBuf::from("/k.pem")));
    assert_eq!(c.jwks, Some(PathBuf::from("/keys.json")));
    assert_eq!(c.jwt_leeway, Duration::from_secs(120));
    let env = env_of(&[("ROOMCAST_JWKS", "/env.json"), ("ROOMCAST_JWT_LEEWAY", "0")]);
    let c = Config::from_args_and_env(&[], &env).unwrap();
    assert_eq!(c.jwks, Some(PathBuf::from("/env.json")));
    assert_eq!(c.jwt_leeway, Duration::ZERO);
    for (args, key, needle) in [
        (&["--jwt-leeway=1500ms"][..], "jwt-leeway", "whole number of seconds"),
        (&["--jwt-leeway=2h"][..], "jwt-leeway", "at most 1h"),
    ] {
        let (k, problem) = setting_error(Config::from_args_and_env(args, &no_env));
        assert_eq!(k, key);
        assert!(problem.contains(needle), "{problem}");
    }
    let file = temp_file("jwks = \"\"\n");
    let (k, problem) = setting_error(Config::from_args_and_env(&[&format!("--config={}", file.display())], &no_env));
    assert_eq!((k.as_str(), problem.as_str()), ("jwks", "must not be empty"));
    std::fs::remove_file(file).unwrap();
}

#[test]
fn every_flag_has_an_environment_variable() {
    let asked = RefCell::new(Vec::new());
    let env = |name: &str| {
        asked.borrow_mut().push(name.to_string());
        None
    };
    Config::from_args_and_env(&[], &env).unwrap();
    let asked = asked.into_inner();
    let serve = cli_command();
    let serve = serve.find_subcommand("serve").unwrap();
    for arg in serve.get_arguments() {
        let Some(long) = arg.get_long() else { continue };
        if long == "help" {
            continue;
        }
        let name = env_name(long);
        assert!(asked.contains(&name), "{name} is never read");
        let help = arg.get_help().unwrap().to_string();
        assert!(help.contains(&name), "help of --{long} lacks {name}");
    }
}

#[test]
fn every_flag_is_a_file_key_in_both_spellings() {
    let serve = cli_command();
    let serve = serve.find_subcommand("serve").unwrap();
    for arg in serve.get_arguments() {
        let Some(long) = arg.get_long() else { continue };
        if long == "help" || long == "config" {
            continue;
        }
        for key in [long.to_string(), long.replace('-', "_")] {
            // An array is the wrong type for every setting, so a known
            // key fails on its type and an unknown one on its name.
            let text = format!("{key} = [[]]\n");
            let err = Settings::from_toml(&text, "test.toml").unwrap_err();
            let msg = err.to_string();
            assert!(!msg.contains("unknown key"), "{key}: {msg}");
            assert!(msg.starts_with(&format!("{key}: ")), "{msg}");
        }
    }
}

#[test]
fn the_settings_document_matches() {
    let doc = include_str!("../../docs/CONFIG.md");
    let serve = cli_command();
    let serve = serve.find_subcommand("serve").unwrap();
    for arg in serve.get_arguments() {
        let Some(long) = arg.get_long() else { continue };
        if long == "help" {
            continue;
        }
        assert!(doc.contains(&format!("| `--{long}")), "--{long} undocumented");
        assert!(doc.contains(&format!("`{}`", env_name(long))));
    }
    let start = doc.find("```toml\n").unwrap() + "```toml\n".len();
    let len = doc[start..].find("```").unwrap();
    let mut config = Config::default();
    Settings::from_toml(&doc[start..start + len], "CONFIG.md").unwrap().apply(&mut config);
    config.validate().unwrap();
    assert_eq!(config.max_message_bytes, 128 << 10);
}

/// The markers around the generated settings table in docs/CONFIG.md.
const TABLE_START: &str = "<!-- settings table: generated from src/config/mod.rs -->\n";
const TABLE_END: &str = "<!-- end of settings table -->\n";

/// The settings table in docs/CONFIG.md is the one the declaration renders.
/// `ROOMCAST_BLESS=1 cargo test --release --lib config::tests::the_settings_table_is_current`
/// writes it there instead (and passes).
#[test]
fn the_settings_table_is_current() {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("docs/CONFIG.md");
    let doc = std::fs::read_to_string(&path).unwrap();
    let start = doc.find(TABLE_START).expect("no start marker in docs/CONFIG.md") + TABLE_START.len();
    let len = doc[start..].find(TABLE_END).expect("no end marker in docs/CONFIG.md");
    let table = declare::settings_table(&Settings::doc_rows());
    if std::env::var_os("ROOMCAST_BLESS").is_some_and(|v| v == "1") {
        let blessed = format!("{}{table}{}", &doc[..start], &doc[start + len..]);
        std::fs::write(&path, blessed).unwrap();
        return;
    }
    let current = &doc[start..start + len];
    for (line, (want, have)) in table.lines().zip(current.lines()).enumerate() {
        assert_eq!(have, want, "docs/CONFIG.md settings table, row {line}; rerun with ROOMCAST_BLESS=1");
    }
    assert_eq!(current, table, "docs/CONFIG.md settings table is not the declared one; rerun with ROOMCAST_BLESS=1");
}

#[test]
fn the_table_has_a_row_per_flag() {
    let table = declare::settings_table(&Settings::doc_rows());
    let serve = cli_command();
    let serve = serve.find_subcommand("serve").unwrap();
    let flags: Vec<&str> = serve.get_arguments().filter_map(|a| a.get_long()).filter(|l| *l != "help").collect();
    let rows: Vec<&str> = table.lines().skip(2).collect();
    assert_eq!(rows.len(), flags.len());
    for (row, flag) in rows.iter().zip(&flags) {
        assert!(row.starts_with(&format!("| `--{flag}")), "{row}");
        assert!(row.contains(&format!("| `{}` |", env_name(flag))), "{row}");
        assert!(!row.contains('\n'));
    }
    // A switch takes no value in the table, as on the command line.
    assert!(table.contains("| `--anonymous` | `ROOMCAST_ANONYMOUS` | `anonymous` | `false` |"));
    assert!(table.contains(
        "| `--threads N` | `ROOMCAST_THREADS` | `threads` | number of CPUs | event-loop threads; 1 to 1024 |"
    ));
}

/// A default that `--help` shows, when it is a value of the setting, is
/// the default the setting has.
#[test]
fn help_defaults_are_the_defaults() {
    for row in Settings::doc_rows() {
        assert_eq!(row.wrong_default, None, "--{}", row.long);
    }
    // And the check can fail: a shown default that is not the real one.
    let (_, wrong) =
        declare::doc_default(Some("2s"), parse_duration, Some(&Duration::from_secs(1)), |d| values::show_duration(*d));
    assert!(wrong.is_some());
}

/// Each setting's names are distinct from every other's in each spelling.
#[test]
fn names_are_distinct() {
    use declare::Layer;
    let mut seen = std::collections::HashSet::new();
    for (snake, kebab) in Settings::NAMES.iter().zip(Settings::kebab()) {
        assert!(seen.insert(snake.to_string()), "{snake}");
        if kebab != snake {
            assert!(seen.insert(kebab.clone()), "{kebab}");
        }
    }
    assert!(!Settings::NAMES.contains(&"config"), "`config` names the file, not a setting");
}

/// The limits' messages, as `validate` words them.
#[test]
fn limit_messages() {
    let show = |n: &usize| n.to_string();
    let key = |r: Result<(), ConfigError>| r.unwrap_err().to_string();
    assert_eq!(key(Limit::Between(1, 9).check("k", Some(&0), show)), "k: must be at least 1");
    assert_eq!(key(Limit::Between(1, 9).check("k", Some(&10), show)), "k: must be at most 9");
    assert_eq!(key(Limit::AtLeast(2).check("k", Some(&1), show)), "k: must be at least 2");
    assert_eq!(key(Limit::AtMost(9).check("k", Some(&10), show)), "k: must be at most 9");
    assert_eq!(key(Limit::Positive(9).check("k", Some(&0), show)), "k: must be more than 0");
    assert_eq!(key(Limit::Span(2, 9).check("k", Some(&1), show)), "k: must be from 2 to 9");
    assert_eq!(key(Limit::Span(2, 9).check("k", Some(&10), show)), "k: must be from 2 to 9");
    assert_eq!(key(Limit::NotEmpty.check("k", Some(&String::new()), |s| s.clone())), "k: must not be empty");
    let rate = Limit::Rate("sends", 10.0);
    for bad in [-0.5, 10.5, f64::NAN, f64::INFINITY] {
        assert_eq!(
            key(rate.check("k", Some(&bad), |r| r.to_string())),
            "k: must be a number of sends per second from 0 to 10"
        );
    }
    for ok in [0.0, 10.0] {
        rate.check("k", Some(&ok), |r| r.to_string()).unwrap();
    }
    Limit::Between(1, 9).check("k", None, show).unwrap();
    Limit::Between(1, 9).check("k", Some(&1), show).unwrap();
    Limit::Between(1, 9).check("k", Some(&9), show).unwrap();
}

#[test]
fn bad_values_name_their_source() {
    let env = env_of(&[("ROOMCAST_MAX_MESSAGE_BYTES", "lots")]);
    let (key, problem) = setting_error(Config::from_args_and_env(&[], &env));
    assert_eq!(key, "ROOMCAST_MAX_MESSAGE_BYTES");
    assert!(problem.contains("lots"), "{problem}");

    let env = env_of(&[("ROOMCAST_DURABILITY", "sometimes")]);
    let (key, _) = setting_error(Config::from_args_and_env(&[], &env));
    assert_eq!(key, "ROOMCAST_DURABILITY");

    let file = temp_file("listen = \"127.0.0.1:1\"\nthreads = \"many\"\n");
    let (key, problem) = setting_error(Config::from_args_and_env(&[&format!("--config={}", file.display())], &no_env));
    assert_eq!(key, "threads");
    assert!(problem.contains("line 2"), "{problem}");
    assert!(!problem.contains('\n'));
    std::fs::remove_file(file).unwrap();

    let file = temp_file("bogus-key = 1\n");
    let (key, problem) = setting_error(Config::from_args_and_env(&[&format!("--config={}", file.display())], &no_env));
    assert_eq!(key, "bogus-key");
    assert!(problem.contains("unknown key"), "{problem}");
    std::fs::remove_file(file).unwrap();

    let file = temp_file("this is not toml\n");
    let err = Config::from_args_and_env(&[&format!("--config={}", file.display())], &no_env).unwrap_err();
    assert!(matches!(err, CliError::Config(ConfigError::File { .. })));
    assert!(!err.to_string().contains('\n'), "{err}");
    std::fs::remove_file(file).unwrap();

    let err = Config::from_args_and_env(&["--config=/nonexistent/roomcast.toml"], &no_env).unwrap_err();
    assert!(err.to_string().contains("cannot read"), "{err}");

    // A file far too large to be settings, such as a device.
    let file = temp_file(&format!("# {}\n", "x".repeat(1 << 20)));
    let err = Config::from_args_and_env(&[&format!("--config={}", file.display())], &no_env).unwrap_err();
    assert!(err.to_string().contains("larger than 1MiB"), "{err}");
    std::fs::remove_file(file).unwrap();
    #[cfg(unix)]
    {
        let err = Config::from_args_and_env(&["--config=/dev/zero"], &no_env).unwrap_err();
        assert!(matches!(err, CliError::Config(ConfigError::File { .. })), "{err}");
    }
    let file = temp_file("");
    std::fs::write(&file, b"threads = \"\xff\"\n").unwrap();
    let err = Config::from_args_and_env(&[&format!("--config={}", file.display())], &no_env).unwrap_err();
    assert!(matches!(err, CliError::Config(ConfigError::File { .. })), "{err}");
    std::fs::remove_file(file).unwrap();

    assert!(matches!(Config::from_args_and_env(&["--threads=many"], &no_env), Err(CliError::Usage(_))));
    assert!(matches!(Config::from_args_and_env(&["--no-such-flag"], &no_env), Err(CliError::Usage(_))));
}

#[test]
fn validation() {
    let cases: &[(&[&str], &str)] = &[
        (&["--threads=0"], "threads"),
        (&["--tls-listen=127.0.0.1:8443"], "tls-listen"),
        (&["--tls-listen=127.0.0.1:8443", "--tls-cert=c.pem"], "tls-listen"),
        (&["--tls-cert=c.pem", "--tls-key=k.pem"], "tls-cert"),
        (&["--tls-listen=127.0.0.1:8080", "--tls-cert=c", "--tls-key=k"], "tls-listen"),
        (&["--max-message-bytes=0"], "max-message-bytes"),
        (&["--max-message-bytes=8MiB", "--max-queue-bytes=4MiB"], "max-queue-bytes"),
        (&["--ping-interval=60s"], "ping-interval"),
        (&["--idle-timeout=0"], "idle-timeout"),
        (&["--request-timeout=0"], "request-timeout"),
        (&["--send-rate=-1"], "send-rate"),
        (&["--send-rate=NaN"], "send-rate"),
        (&["--send-burst=0"], "send-burst"),
        (&["--max-connections=0"], "max-connections"),
        (&["--retain-messages=0"], "retain-messages"),
        (&["--retain-age=0s"], "retain-age"),
        (&["--jwt-audience="], "jwt-audience"),
    ];
    for (args, want) in cases {
        let (key, _) = setting_error(Config::from_args_and_env(args, &no_env));
        assert_eq!(&key, want, "{args:?}");
    }
    // Limits that are allowed to be off.
    let c = Config::from_args_and_env(&["--send-rate=0", "--send-burst=0", "--dedup-window=0"], &no_env).unwrap();
    assert_eq!(c.send_rate, 0.0);
    assert!(Config::from_args_and_env(&["--tls-listen=127.0.0.1:8443", "--tls-cert=c", "--tls-key=k"], &no_env).is_ok());
}

#[test]
fn token_command() {
    let file = temp_file("data = \"/from/file\"\njwt-issuer = \"file-iss\"\n");
    let path = file.display().to_string();
    let env = env_of(&[("ROOMCAST_JWT_SECRET", K32), ("ROOMCAST_CONFIG", &path), ("ROOMCAST_JWT_AUDIENCE", "env-aud")]);
    let inv = parse_command_line(["roomcast", "token", "--sub", "ann"], &env).unwrap();
    let Invocation::Token(t) = inv else { panic!("not a token request") };
    assert_eq!(t.sub, "ann");
    assert_eq!(t.ttl, Duration::from_secs(3600));
    assert_eq!(t.role, None);
    assert_eq!(t.data, PathBuf::from("/from/file"));
    assert_eq!(t.jwt_issuer.as_deref(), Some("file-iss"));
    assert_eq!(t.jwt_audience.as_deref(), Some("env-aud"));
    assert_eq!(t.jwt_secret.as_ref().map(JwtSecret::expose), Some(K32));

    let env = env_of(&[("ROOMCAST_DATA", "/from/env")]);
    let inv = parse_command_line(["roomcast", "token", "--sub", "bo", "--ttl", "60", "--role", "admin"], &env).unwrap();
    let Invocation::Token(t) = inv else { panic!("not a token request") };
    assert_eq!(t.ttl, Duration::from_secs(60));
    assert_eq!(t.role.as_deref(), Some("admin"));
    assert_eq!(t.data, PathBuf::from("/from/env"));

    let inv = parse_command_line(["roomcast", "token", "--sub=bo", "--data=/flag", "--ttl=2h"], &env).unwrap();
    let Invocation::Token(t) = inv else { panic!("not a token request") };
    assert_eq!(t.data, PathBuf::from("/flag"));
    assert_eq!(t.ttl, Duration::from_secs(7200));

    assert!(parse_command_line(["roomcast", "token"], &no_env).is_err());
    assert!(parse_command_line(["roomcast", "token", "--sub="], &no_env).is_err());
    for sub in ["a\nb".to_string(), "x".repeat(129), "\u{7f}".to_string()] {
        match parse_command_line(["roomcast", "token", &format!("--sub={sub}")], &no_env) {
            Err(CliError::Config(ConfigError::Setting { key, .. })) => assert_eq!(key, "sub"),
            other => panic!("{sub:?}: {other:?}"),
        }
    }
    assert!(parse_command_line(["roomcast", "token", "--sub=a", "--ttl=0"], &no_env).is_err());
    std::fs::remove_file(file).unwrap();
}

#[test]
fn dev_cert_command() {
    let inv =
        parse_command_line(["roomcast", "dev-cert", "--out-cert", "c.pem", "--out-key", "k.pem"], &no_env).unwrap();
    let Invocation::DevCert(d) = inv else { panic!("not a dev-cert request") };
    assert_eq!(d.names, vec!["localhost".to_string()]);
    assert_eq!(d.out_cert, PathBuf::from("c.pem"));
}

#[test]
fn help_and_version_are_usage_results() {
    for args in [&["roomcast", "--help"][..], &["roomcast", "serve", "--help"], &["roomcast", "--version"]] {
        match parse_command_line(args.iter().copied(), &no_env) {
            Err(CliError::Usage(e)) => assert_eq!(e.exit_code(), 0, "{args:?}"),
            other => panic!("{args:?}: {other:?}"),
        }
    }
    match parse_command_line(["roomcast", "serve", "--bogus"], &no_env) {
        Err(CliError::Usage(e)) => assert_eq!(e.exit_code(), 2),
        other => panic!("{other:?}"),
    }
}

/// Every bound of [`Config::validate`], as `(flag, refused value, key)`.
/// Durations and sizes carry a unit so that the same text is a TOML
/// string; the plain numbers are TOML numbers.
const PAST_BOUNDS: &[(&str, &str, &str)] = &[
    ("threads", "1025", "threads"),
    ("max-message-bytes", "67108865", "max-message-bytes"),
    ("max-message-bytes", "65MiB", "max-message-bytes"),
    ("max-queue-bytes", "1025MiB", "max-queue-bytes"),
    ("drain-timeout", "3601s", "drain-timeout"),
    ("idle-timeout", "86401s", "idle-timeout"),
    ("idle-timeout", "25h", "idle-timeout"),
    ("ping-interval", "86401s", "ping-interval"),
    ("request-timeout", "3601s", "request-timeout"),
    ("request-timeout", "18446744073709551615s", "request-timeout"),
    ("request-timeout", "18446744073709551615ms", "request-timeout"),
    ("send-rate", "1000001", "send-rate"),
    ("send-rate", "-1", "send-rate"),
    ("send-rate", "inf", "send-rate"),
    ("send-rate", "nan", "send-rate"),
    ("send-burst", "1000001", "send-burst"),
    ("send-burst", "0", "send-burst"),
    ("request-rate", "1e7", "request-rate"),
    ("request-rate", "-0.5", "request-rate"),
    ("request-rate", "inf", "request-rate"),
    ("request-burst", "0", "request-burst"),
    ("request-burst", "1000001", "request-burst"),
    ("connect-rate-per-ip", "1000000.5", "connect-rate-per-ip"),
    ("connect-rate-per-ip", "nan", "connect-rate-per-ip"),
    ("connect-burst-per-ip", "0", "connect-burst-per-ip"),
    ("connect-burst-per-ip", "4294967295", "connect-burst-per-ip"),
    ("post-rate-per-ip", "2e6", "post-rate-per-ip"),
    ("post-rate-per-ip", "-inf", "post-rate-per-ip"),
    ("post-burst-per-ip", "0", "post-burst-per-ip"),
    ("post-burst-per-ip", "1000001", "post-burst-per-ip"),
    ("max-connections", "10000001", "max-connections"),
    ("max-conns-per-ip", "10000001", "max-conns-per-ip"),
    ("history-tail", "1000001", "history-tail"),
    ("max-replay", "100001", "max-replay"),
    ("dedup-window", "31d", "dedup-window"),
    ("dedup-window", "2592001s", "dedup-window"),
    ("retain-age", "36501d", "retain-age"),
    ("max-body-depth", "0", "max-body-depth"),
    ("max-body-depth", "1025", "max-body-depth"),
    ("room-idle-timeout", "0s", "room-idle-timeout"),
    ("room-idle-timeout", "999ms", "room-idle-timeout"),
    ("room-idle-timeout", "86401s", "room-idle-timeout"),
];

/// `value` as the right side of a TOML line: a number stays a number,
/// anything else (a duration or size with its unit) becomes a string.
fn toml_value(value: &str) -> String {
    let number = value.parse::<i64>().is_ok()
        || matches!(value, "inf" | "-inf" | "nan")
        || (value.parse::<f64>().is_ok() && value.bytes().all(|b| b.is_ascii_digit() || b"+-.e".contains(&b)));
    if number {
        value.to_string()
    } else {
        format!("{value:?}")
    }
}

#[test]
fn bounds_are_refused_from_every_layer() {
    for &(flag, value, want) in PAST_BOUNDS {
        let from_flag = Config::from_args_and_env(&[&format!("--{flag}={value}")], &no_env);
        let (key, problem) = setting_error(from_flag);
        assert_eq!(key, want, "--{flag}={value}");
        assert!(!problem.is_empty() && !problem.contains('\n'), "{problem}");

        let env = env_of(&[(&env_name(flag), value)]);
        let (key, _) = setting_error(Config::from_args_and_env(&[], &env));
        assert_eq!(key, want, "{}={value}", env_name(flag));

        let file = temp_file(&format!("{flag} = {}\n", toml_value(value)));
        let (key, _) = setting_error(Config::from_args_and_env(&[&format!("--config={}", file.display())], &no_env));
        assert_eq!(key, want, "{flag} = {} in a file", toml_value(value));
        std::fs::remove_file(file).unwrap();
    }
}

#[test]
fn values_at_the_bounds_are_accepted() {
    let c = Config::from_args_and_env(
        &[
            "--threads=1024",
            "--max-message-bytes=64MiB",
            "--max-queue-bytes=1GiB",
            "--drain-timeout=1h",
            "--idle-timeout=1d",
            "--ping-interval=23h",
            "--request-timeout=3600",
            "--send-rate=1000000",
            "--send-burst=1000000",
            "--request-rate=1e6",
            "--request-burst=1000000",
            "--connect-rate-per-ip=0",
            "--connect-burst-per-ip=0",
            "--post-rate-per-ip=0.001",
            "--post-burst-per-ip=1",
            "--max-connections=10000000",
            "--max-conns-per-ip=10000000",
            "--history-tail=1000000",
            "--max-replay=100000",
            "--dedup-window=30d",
            "--retain-age=36500d",
            "--max-body-depth=1024",
            "--room-idle-timeout=1d",
        ],
        &no_env,
    )
    .unwrap();
    assert_eq!(c.max_message_bytes, bounds::MAX_MESSAGE_BYTES);
    assert_eq!(c.retain_age, Some(bounds::RETAIN_AGE));
    let c = Config::from_args_and_env(
        &["--room-idle-timeout=1s", "--max-body-depth=1", "--max-conns-per-ip=0", "--history-tail=0"],
        &no_env,
    )
    .unwrap();
    assert_eq!(c.room_idle_timeout, Duration::from_secs(1));
    // Each bucket may be switched off entirely.
    for (rate, burst) in [
        ("send-rate", "send-burst"),
        ("request-rate", "request-burst"),
        ("connect-rate-per-ip", "connect-burst-per-ip"),
        ("post-rate-per-ip", "post-burst-per-ip"),
    ] {
        Config::from_args_and_env(&[&format!("--{rate}=0"), &format!("--{burst}=0")], &no_env).unwrap();
    }
}

#[test]
fn huge_request_timeout_is_a_config_error() {
    let (key, problem) =
        setting_error(Config::from_args_and_env(&["--request-timeout", "18446744073709551615"], &no_env));
    assert_eq!(key, "request-timeout");
    assert_eq!(problem, "must be at most 1h");
    let env = env_of(&[("ROOMCAST_REQUEST_TIMEOUT", "18446744073709551615")]);
    assert_eq!(setting_error(Config::from_args_and_env(&[], &env)).0, "request-timeout");
    // One line, as main prints it.
    let err = Config::from_args_and_env(&["--request-timeout=18446744073709551615"], &no_env).unwrap_err();
    assert_eq!(err.to_string(), "request-timeout: must be at most 1h");
}

#[test]
fn bound_texts_read_back_as_their_bounds() {
    assert_eq!(show_duration(Duration::from_secs(3600)), "1h");
    assert_eq!(show_duration(Duration::from_secs(36_500 * 86_400)), "36500d");
    assert_eq!(show_duration(Duration::from_secs(90)), "90s");
    assert_eq!(show_duration(Duration::from_millis(1500)), "1500ms");
    assert_eq!(show_duration(Duration::ZERO), "0ms");
    assert_eq!(show_size(64 << 20), "64MiB");
    assert_eq!(show_size(1 << 30), "1GiB");
    assert_eq!(show_size(1000), "1000");
    for d in [bounds::DRAIN_TIMEOUT, bounds::RETAIN_AGE, bounds::TOKEN_TTL, bounds::MIN_ROOM_IDLE_TIMEOUT] {
        assert_eq!(parse_duration(&show_duration(d)), Ok(d));
    }
    for n in [bounds::MAX_MESSAGE_BYTES, bounds::MAX_QUEUE_BYTES] {
        assert_eq!(parse_size(&show_size(n)), Ok(n));
    }
}

#[test]
fn token_ttl_is_bounded() {
    let env = env_of(&[("ROOMCAST_JWT_SECRET", K32)]);
    for ttl in ["18446744073709551615", "3651d", "315360001", "18446744073709551615ms"] {
        match parse_command_line(["roomcast", "token", "--sub=a", &format!("--ttl={ttl}")], &env) {
            Err(CliError::Config(ConfigError::Setting { key, problem })) => {
                assert_eq!(key, "ttl", "{ttl}");
                assert_eq!(problem, "must be at most 3650d (ten years)");
            }
            other => panic!("--ttl={ttl}: {other:?}"),
        }
    }
    let inv = parse_command_line(["roomcast", "token", "--sub=a", "--ttl=3650d"], &env).unwrap();
    let Invocation::Token(t) = inv else { panic!("not a token request") };
    assert_eq!(t.ttl, bounds::TOKEN_TTL);
    // Too large even to parse: a usage error, still status 2.
    match parse_command_line(["roomcast", "token", "--sub=a", "--ttl=18446744073709551615d"], &env) {
        Err(CliError::Usage(e)) => assert_eq!(e.exit_code(), 2),
        other => panic!("{other:?}"),
    }
}

/// Every `serve` flag that takes a value, without `--config` (whose
/// value is a file to read, and arbitrary names include /dev/zero).
fn value_flags() -> Vec<String> {
    let serve = cli_command();
    let serve = serve.find_subcommand("serve").unwrap().clone();
    serve
        .get_arguments()
        .filter_map(|a| a.get_long())
        .filter(|l| !matches!(*l, "help" | "config"))
        .map(str::to_string)
        .collect()
}

proptest::proptest! {
    #[test]
    fn arbitrary_values_never_panic(which in 0usize..64, value in ".*", bytes in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..24)) {
        let flags = value_flags();
        let flag = &flags[which % flags.len()];
        let _ = Config::from_args_and_env(&[&format!("--{flag}={value}")], &no_env);
        let _ = Config::from_args_and_env(&[&format!("--{flag}"), &value], &no_env);
        let env = env_of(&[(&env_name(flag), &value)]);
        let _ = Config::from_args_and_env(&[], &env);
        // The file layer, without the file: a TOML string, and the value
        // as raw TOML text.
        for text in [format!("{flag} = {}\n", toml::Value::String(value.clone())), format!("{flag} = {value}\n")] {
            if let Ok(settings) = Settings::from_toml(&text, "fuzz.toml") {
                let mut config = Config::default();
                settings.apply(&mut config);
                let _ = config.validate();
            }
        }
        let lossy = String::from_utf8_lossy(&bytes);
        let _ = parse_duration(&value);
        let _ = parse_duration(&lossy);
        let _ = parse_size(&value);
        let _ = parse_size(&lossy);
        let _ = parse_bool(&value);
        let _ = parse_command_line(["roomcast", "token", "--sub=a", &format!("--ttl={value}")], &no_env);
    }

    #[test]
    fn numbers_with_units_never_panic(n in proptest::prelude::any::<u64>(), unit in "(ms|s|m|h|d|KiB|MiB|GiB|B|)") {
        let text = format!("{n}{unit}");
        let _ = parse_duration(&text);
        let _ = parse_size(&text);
        for flag in value_flags() {
            let _ = Config::from_args_and_env(&[&format!("--{flag}={text}")], &no_env);
        }
    }
}

// ---------------------------------------------------------------------------
// The [cluster] table.

const SECRET16: &str = "0123456789abcdef";

/// A `[cluster]` table of three nodes with `lines` added to it, after any
/// top-level `before` lines.
fn cluster_toml(before: &str, lines: &str) -> String {
    format!(
        "{before}[cluster]\n\
         nodes = [\n\
         {{ id = \"a\", addr = \"tcp://127.0.0.1:7101\" }},\n\
         {{ id = \"b\", addr = \"tcp://127.0.0.1:7102\" }},\n\
         {{ id = \"c\", addr = \"ipc:///tmp/roomcast-c.ipc\" }},\n\
         ]\n\
         {lines}"
    )
}

/// `roomcast serve --config FILE ARGS` with `text` as FILE.
fn with_file(text: &str, args: &[&str], env: &dyn Fn(&str) -> Option<String>) -> Result<Config, CliError> {
    let file = temp_file(text);
    let mut all = vec![format!("--config={}", file.display())];
    all.extend(args.iter().map(|a| a.to_string()));
    let all: Vec<&str> = all.iter().map(String::as_str).collect();
    let result = Config::from_args_and_env(&all, env);
    std::fs::remove_file(file).unwrap();
    result
}

fn nodes3() -> Vec<cluster::NodeSpec> {
    [("a", "tcp://127.0.0.1:7101"), ("b", "tcp://127.0.0.1:7102"), ("c", "ipc:///tmp/roomcast-c.ipc")]
        .iter()
        .map(|(id, addr)| cluster::NodeSpec { id: id.to_string(), addr: addr.to_string() })
        .collect()
}

#[test]
fn cluster_table_parses() {
    let text = cluster_toml(
        "threads = 2\n",
        &format!("node-id = \"b\"\nsecret = \"{SECRET16}\"\ndown-after = \"750ms\"\nlisten = \"tcp://0.0.0.0:7102\"\n"),
    );
    let c = with_file(&text, &[], &no_env).unwrap();
    assert_eq!(c.threads, 2);
    let cluster = c.cluster.clone().unwrap();
    assert_eq!(
        cluster,
        cluster::ClusterConfig {
            node_id: "b".into(),
            nodes: nodes3(),
            secret: cluster::ClusterSecret(SECRET16.as_bytes().to_vec()),
            down_after: Duration::from_millis(750),
            listen: Some("tcp://0.0.0.0:7102".into()),
            queue_bytes: 16 << 20,
        }
    );
    assert_eq!(cluster.me(), 1);
    assert_eq!(cluster.listen_addr(), "tcp://0.0.0.0:7102");
    // The merged settings stay readable too.
    assert_eq!(c.cluster_node_id.as_deref(), Some("b"));
    assert_eq!(c.cluster_down_after, Duration::from_millis(750));
    assert!(!format!("{c:?}").contains(SECRET16), "Debug hides the secret");

    // snake_case keys, the default down-after, no listen, and nodes as an
    // array of tables.
    let text = format!(
        "[cluster]\nnode_id = \"c\"\nsecret = \"{SECRET16}\"\n\
         [[cluster.nodes]]\nid = \"a\"\naddr = \"tcp://127.0.0.1:7101\"\n\
         [[cluster.nodes]]\nid = \"c\"\naddr = \"ipc:///tmp/c\"\n"
    );
    let cluster = with_file(&text, &[], &no_env).unwrap().cluster.unwrap();
    assert_eq!(cluster.node_id, "c");
    assert_eq!(cluster.down_after, Duration::from_secs(5));
    assert_eq!(cluster.listen, None);
    assert_eq!(cluster.listen_addr(), "ipc:///tmp/c");
    assert_eq!(cluster.nodes.len(), 2);
    let text = cluster_toml("", &format!("node-id = \"a\"\nsecret = \"{SECRET16}\"\ndown_after = 2\n"));
    assert_eq!(with_file(&text, &[], &no_env).unwrap().cluster.unwrap().down_after, Duration::from_secs(2));

    // Without a table, no cluster.
    assert_eq!(Config::from_args_and_env(&[], &no_env).unwrap().cluster, None);
}

#[test]
fn a_single_node_cluster_is_allowed() {
    let text = format!(
        "[cluster]\nnode-id = \"a\"\nsecret = \"{SECRET16}\"\nnodes = [{{ id = \"a\", addr = \"ipc:///tmp/a\" }}]\n"
    );
    let cluster = with_file(&text, &[], &no_env).unwrap().cluster.unwrap();
    assert_eq!(cluster.nodes.len(), 1);
    assert_eq!(cluster.me(), 0);
}

#[test]
fn cluster_flags_and_environment_override_the_table() {
    let text = cluster_toml("", &format!("node-id = \"a\"\nsecret = \"{SECRET16}\"\ndown-after = \"3s\"\n"));
    let env = env_of(&[
        ("ROOMCAST_CLUSTER_NODE_ID", "b"),
        ("ROOMCAST_CLUSTER_SECRET", "from-the-environment"),
        ("ROOMCAST_CLUSTER_DOWN_AFTER", "4s"),
        ("ROOMCAST_CLUSTER_LISTEN", "tcp://0.0.0.0:9"),
    ]);
    let cluster = with_file(&text, &[], &env).unwrap().cluster.unwrap();
    assert_eq!(cluster.node_id, "b");
    assert_eq!(cluster.secret.0, b"from-the-environment");
    assert_eq!(cluster.down_after, Duration::from_secs(4));
    assert_eq!(cluster.listen.as_deref(), Some("tcp://0.0.0.0:9"));

    let flags = ["--cluster-node-id=c", "--cluster-down-after=200ms", "--cluster-listen=ipc:///tmp/x"];
    let cluster = with_file(&text, &flags, &env).unwrap().cluster.unwrap();
    assert_eq!(cluster.node_id, "c");
    assert_eq!(cluster.me(), 2);
    assert_eq!(cluster.down_after, Duration::from_millis(200));
    assert_eq!(cluster.listen.as_deref(), Some("ipc:///tmp/x"));
    assert_eq!(cluster.secret.0, b"from-the-environment", "the secret is never a flag");

    // The file's secret when the environment has none (or an empty one).
    let env = env_of(&[("ROOMCAST_CLUSTER_SECRET", "")]);
    let cluster = with_file(&text, &["--cluster-node-id=b"], &env).unwrap().cluster.unwrap();
    assert_eq!(cluster.node_id, "b");
    assert_eq!(cluster.secret.0, SECRET16.as_bytes());
    assert_eq!(cluster.down_after, Duration::from_secs(3));

    // The node id and the secret may come from outside the file alone.
    let env = env_of(&[("ROOMCAST_CLUSTER_SECRET", SECRET16)]);
    let cluster = with_file(&cluster_toml("", ""), &["--cluster-node-id=a"], &env).unwrap().cluster.unwrap();
    assert_eq!(cluster.node_id, "a");
    assert!(matches!(Config::from_args_and_env(&["--cluster-secret=x"], &no_env), Err(CliError::Usage(_))));
}

/// `(TOML text, flags, environment, key, part of the problem)`.
type ClusterCase<'a> = (String, Vec<&'a str>, Vec<(&'a str, &'a str)>, &'a str, &'a str);

/// Each way a cluster configuration is refused, with the key and problem.
#[test]
fn cluster_validation() {
    let ok_secret = format!("secret = \"{SECRET16}\"\n");
    let with = |lines: &str| cluster_toml("", &format!("node-id = \"a\"\n{ok_secret}{lines}"));
    let table = |nodes: &str, lines: &str| format!("[cluster]\nnode-id = \"a\"\n{ok_secret}nodes = [{nodes}]\n{lines}");
    let long_id = "x".repeat(65);
    let long_addr = format!("tcp://{}", "h".repeat(251));
    let many: Vec<String> = (0..65).map(|i| format!("{{ id = \"n{i}\", addr = \"ipc:///tmp/n{i}\" }}")).collect();
    let many = format!("{{ id = \"a\", addr = \"ipc:///tmp/a\" }}, {}", many.join(", "));
    let secret_env = [("ROOMCAST_CLUSTER_SECRET", SECRET16)];
    let cases: Vec<ClusterCase> = vec![
        // Cluster settings without a cluster.
        (String::new(), vec!["--cluster-node-id=a"], vec![], "cluster-node-id", "needs a [cluster] table"),
        (String::new(), vec!["--cluster-down-after=1s"], vec![], "cluster-down-after", "needs a [cluster] table"),
        (String::new(), vec!["--cluster-listen=tcp://x:1"], vec![], "cluster-listen", "needs a [cluster] table"),
        (String::new(), vec![], vec![("ROOMCAST_CLUSTER_NODE_ID", "a")], "cluster-node-id", "needs a [cluster]"),
        (String::new(), vec![], secret_env.to_vec(), "ROOMCAST_CLUSTER_SECRET", "needs a [cluster] table"),
        ("cluster-node-id = \"a\"\n".into(), vec![], vec![], "cluster-node-id", "needs a [cluster] table"),
        (format!("[cluster]\nnode-id = \"a\"\n{ok_secret}"), vec![], vec![], "cluster.nodes", "missing"),
        // Missing pieces.
        (cluster_toml("", &ok_secret), vec![], vec![], "cluster.node-id", "missing"),
        (cluster_toml("", "node-id = \"a\"\n"), vec![], vec![], "cluster.secret", "ROOMCAST_CLUSTER_SECRET"),
        // This node is not one of the nodes.
        (with(""), vec!["--cluster-node-id=d"], vec![], "cluster.node-id", "\"d\" is not one of the nodes (a, b, c)"),
        (with(""), vec!["--cluster-node-id="], vec![], "cluster-node-id", "must not be empty"),
        // Node ids.
        (table("{ id = \"\", addr = \"ipc:///a\" }", ""), vec![], vec![], "cluster.nodes", "must be 1 to 64 bytes"),
        (
            table(&format!("{{ id = \"{long_id}\", addr = \"ipc:///a\" }}"), ""),
            vec![],
            vec![],
            "cluster.nodes",
            "1 to 64",
        ),
        (table("{ id = \"a b\", addr = \"ipc:///a\" }", ""), vec![], vec![], "cluster.nodes", "\"a b\""),
        (table("{ id = \"a/\", addr = \"ipc:///a\" }", ""), vec![], vec![], "cluster.nodes", "A-Z, a-z, 0-9"),
        (
            table("{ id = \"a\", addr = \"ipc:///a\" }, { id = \"a\", addr = \"ipc:///b\" }", ""),
            vec![],
            vec![],
            "cluster.nodes",
            "node id \"a\" is listed twice",
        ),
        // Addresses.
        (
            table("{ id = \"a\", addr = \"ipc:///a\" }, { id = \"b\", addr = \"ipc:///a\" }", ""),
            vec![],
            vec![],
            "cluster.nodes",
            "address \"ipc:///a\" is listed for both \"a\" and \"b\"",
        ),
        (table("{ id = \"a\", addr = \"http://x:1\" }", ""), vec![], vec![], "cluster.nodes", "tcp:// or ipc://"),
        (table("{ id = \"a\", addr = \"127.0.0.1:7101\" }", ""), vec![], vec![], "cluster.nodes", "tcp:// or ipc://"),
        (table("{ id = \"a\", addr = \"tcp://\" }", ""), vec![], vec![], "cluster.nodes", "names no host"),
        (table("{ id = \"a\", addr = \"ipc:///a\\u0000\" }", ""), vec![], vec![], "cluster.nodes", "control"),
        (table(&format!("{{ id = \"a\", addr = \"{long_addr}\" }}"), ""), vec![], vec![], "cluster.nodes", "256 bytes"),
        // How many nodes.
        (table("", ""), vec![], vec![], "cluster.nodes", "must list 1 to 64 nodes"),
        (table(&many, ""), vec![], vec![], "cluster.nodes", "must list 1 to 64 nodes"),
        // The secret.
        (
            cluster_toml("", "node-id = \"a\"\nsecret = \"0123456789abcde\"\n"),
            vec![],
            vec![],
            "cluster.secret",
            "16 bytes",
        ),
        (with(""), vec![], vec![("ROOMCAST_CLUSTER_SECRET", "short")], "cluster.secret", "at least 16 bytes"),
        // The timing.
        (with("down-after = \"99ms\"\n"), vec![], vec![], "cluster-down-after", "must be from 100ms to 1h"),
        (with(""), vec!["--cluster-down-after=2h"], vec![], "cluster-down-after", "must be from 100ms to 1h"),
        (with(""), vec!["--cluster-down-after=0"], vec![], "cluster-down-after", "must be from 100ms to 1h"),
        // The listener.
        (with("listen = \"0.0.0.0:7101\"\n"), vec![], vec![], "cluster-listen", "tcp:// or ipc://"),
        (with(""), vec!["--cluster-listen=tcp://"], vec![], "cluster-listen", "names no host"),
        // Read errors in the table, naming the key.
        (with("bogus = 1\n"), vec![], vec![], "cluster.bogus", "unknown key `bogus` in [cluster]"),
        (with("node_id = \"b\"\n"), vec![], vec![], "cluster.node_id", "duplicate key `node-id`"),
        (with("node-_id = \"b\"\n"), vec![], vec![], "cluster.node-_id", "unknown key `node-_id`"),
        (with("secret = 5\n"), vec![], vec![], "cluster.secret", "duplicate key"),
        (cluster_toml("", "secret = 5\n"), vec![], vec![], "cluster.secret", "invalid type"),
        (with("down-after = \"soon\"\n"), vec![], vec![], "cluster.down-after", "invalid duration"),
        (
            table("{ id = \"a\", addr = \"ipc:///a\", weight = 2 }", ""),
            vec![],
            vec![],
            "cluster.nodes",
            "unknown key `weight` in a [cluster] node; the keys are id, addr",
        ),
        (table("{ id = \"a\" }", ""), vec![], vec![], "cluster.nodes", "\"a\" needs an `addr`"),
        (table("{ addr = \"ipc:///a\" }", ""), vec![], vec![], "cluster.nodes", "needs an `id`"),
        (table("\"a\"", ""), vec![], vec![], "cluster.nodes", "invalid type"),
        (
            cluster_toml("cluster-node-id = \"a\"\n", &format!("node-id = \"a\"\n{ok_secret}")),
            vec![],
            vec![],
            "cluster-node-id",
            "given both at the top level and as `node-id` in [cluster]",
        ),
        ("cluster = 1\n".into(), vec![], vec![], "cluster", "invalid type"),
    ];
    for (text, flags, env, want_key, want_problem) in &cases {
        let env = env_of(env);
        let result =
            if text.is_empty() { Config::from_args_and_env(flags, &env) } else { with_file(text, flags, &env) };
        let (key, problem) = setting_error(result);
        assert_eq!(&key, want_key, "{text}{flags:?}: {problem}");
        assert!(problem.contains(want_problem), "{text}{flags:?}: {key}: {problem}");
        assert!(!problem.contains('\n'), "{problem}");
    }
}

#[test]
fn cluster_errors_in_a_multiline_node_list_name_the_line() {
    let text = "[cluster]\nnodes = [\n  { id = \"a\", addr = \"ipc:///a\", bogus = 1 },\n]\n";
    let err = with_file(text, &[], &no_env).unwrap_err();
    let msg = err.to_string();
    assert!(msg.contains("line 3") && msg.contains("unknown key `bogus`"), "{msg}");
    assert!(!msg.contains('\n'), "{msg}");
}

#[test]
fn other_commands_ignore_the_cluster() {
    // `token` reads the same file, but has no cluster to check.
    let file = temp_file(&cluster_toml("data = \"/from/file\"\n", "node-id = \"zz\"\n"));
    let env = env_of(&[("ROOMCAST_JWT_SECRET", K32), ("ROOMCAST_CLUSTER_NODE_ID", "q")]);
    let config = format!("--config={}", file.display());
    let inv = parse_command_line(["roomcast", "token", "--sub=a", &config], &env).unwrap();
    let Invocation::Token(t) = inv else { panic!("not a token request") };
    assert_eq!(t.data, PathBuf::from("/from/file"));
    let inv = parse_command_line(["roomcast", "backup", "--out=x", &config], &env).unwrap();
    assert!(matches!(inv, Invocation::Backup { .. }));
    // An unreadable table is still an unreadable file.
    std::fs::write(&file, "[cluster]\nbogus = 1\n").unwrap();
    assert!(parse_command_line(["roomcast", "token", "--sub=a", &config], &env).is_err());
    std::fs::remove_file(file).unwrap();
}

#[test]
fn bus_publish_is_an_address() {
    let c = Config::from_args_and_env(&["--bus-publish=tcp://127.0.0.1:7200"], &no_env).unwrap();
    assert_eq!(c.bus_publish.as_deref(), Some("tcp://127.0.0.1:7200"));
    let env = env_of(&[("ROOMCAST_BUS_PUBLISH", "ipc:///tmp/bus")]);
    assert_eq!(Config::from_args_and_env(&[], &env).unwrap().bus_publish.as_deref(), Some("ipc:///tmp/bus"));
    assert_eq!(Config::default().bus_publish, None);
    let (key, _) = setting_error(Config::from_args_and_env(&["--bus-publish="], &no_env));
    assert_eq!(key, "bus-publish");
}

#[test]
fn cluster_validate_checks_a_config_built_by_hand() {
    let mut c = cluster::ClusterConfig {
        node_id: "a".into(),
        nodes: nodes3(),
        secret: cluster::ClusterSecret(SECRET16.as_bytes().to_vec()),
        down_after: Duration::from_secs(5),
        listen: None,
        queue_bytes: 16 << 20,
    };
    c.validate().unwrap();
    assert_eq!(c.listen_addr(), "tcp://127.0.0.1:7101");
    c.down_after = Duration::from_millis(99);
    assert!(c.validate().is_err());
    c.down_after = bounds::CLUSTER_DOWN_AFTER;
    c.validate().unwrap();
    c.listen = Some("udp://x".into());
    assert!(c.validate().is_err());
}

/// The `[cluster]` example of docs/CONFIG.md is a valid cluster.
#[test]
fn the_cluster_example_is_valid() {
    let doc = include_str!("../../docs/CONFIG.md");
    let marker = "```toml\n# /etc/roomcast/node-a.toml";
    let start = doc.find(marker).expect("no [cluster] example in docs/CONFIG.md") + "```toml\n".len();
    let len = doc[start..].find("```").unwrap();
    let env = env_of(&[("ROOMCAST_CLUSTER_SECRET", SECRET16)]);
    let c = with_file(&doc[start..start + len], &[], &env).unwrap();
    let cluster = c.cluster.unwrap();
    assert_eq!(cluster.node_id, "a");
    assert_eq!(cluster.nodes.len(), 3);
    assert_eq!(cluster.listen_addr(), "tcp://10.0.0.1:7101");
}
