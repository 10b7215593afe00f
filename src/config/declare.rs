//! The machinery behind the one list of serve settings in `config/mod.rs`.
//!
//! Each setting is declared once, in the `settings!` invocation there, with
//! its name, type, value syntax, default, bound, `--help` line and the line
//! docs/CONFIG.md shows for it. From that list the `settings!` macro below
//! generates the [`Config`](super::Config) fields and their defaults, the
//! all-optional `Settings` layer with its clap flags, its environment
//! variables and its TOML keys, the per-setting checks of
//! [`Config::validate`](super::Config::validate), and the rows of the table
//! in docs/CONFIG.md. The names are all derived from the field name:
//! `max_message_bytes` is the flag and TOML key `max-message-bytes`, the
//! TOML key `max_message_bytes` as well, and `ROOMCAST_MAX_MESSAGE_BYTES`.
//!
//! What the macro generates for a setting depends on its value syntax, one of:
//!
//! - `plain`: the type's own `FromStr` (clap's parser for the type on the
//!   command line, so that clap's messages stay those of the type) and its
//!   serde form in TOML;
//! - `size`: [`parse_size`](super::parse_size), and a TOML string or integer;
//! - `duration`: [`parse_duration`](super::parse_duration), likewise;
//! - `switch`: a boolean; `--flag` alone means true, `--flag=false` turns it
//!   off, and the environment takes [`parse_bool`](super::parse_bool).
//!
//! A setting marked `optional` is an `Option` in [`Config`](super::Config),
//! `None` unless a layer sets it.
//!
//! Rules between settings (a TLS address needs a certificate, a burst must
//! be at least 1 while its rate is on, ...) are not per setting: they stay
//! in `Config::check_combinations`.

use std::marker::PhantomData;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use serde::de::{self, DeserializeSeed, Deserializer, MapAccess, Visitor};

use super::values::{show_duration, show_size};
use super::{ConfigError, Durability};

/// The values one setting accepts beyond what its type does. `check` refuses
/// the rest with the one-line problem quoted on each variant (`{min}` and
/// `{max}` in the setting's own syntax, `64MiB`, `1h`); the docs table shows
/// the range after the setting's meaning.
#[derive(Debug, Clone, Copy)]
pub(crate) enum Limit<T> {
    /// Not the empty string or path: "must not be empty".
    NotEmpty,
    /// From zero to `max`: "must be at most {max}".
    AtMost(T),
    /// "must be at least {min}"; no upper bound.
    AtLeast(T),
    /// "must be at least {min}", "must be at most {max}".
    Between(T, T),
    /// "must be more than 0", "must be at most {max}".
    Positive(T),
    /// "must be from {min} to {max}", on either side.
    Span(T, T),
    /// A token bucket refill rate per second, from 0 (off) to `max`; NaN is
    /// refused too: "must be a number of {what} per second from 0 to {max}".
    Rate(&'static str, T),
}

impl<T: PartialOrd + Default> Limit<T> {
    /// `Ok` when `value` (`None`: an optional setting left unset) is within
    /// the limit; else the problem, under `key`.
    pub(crate) fn check(&self, key: &str, value: Option<&T>, show: fn(&T) -> String) -> Result<(), ConfigError> {
        let Some(v) = value else { return Ok(()) };
        let zero = T::default();
        let problem = match self {
            Limit::NotEmpty if *v == zero => "must not be empty".to_string(),
            Limit::AtMost(max) if v > max => format!("must be at most {}", show(max)),
            Limit::AtLeast(min) if v < min => format!("must be at least {}", show(min)),
            Limit::Between(min, _) if v < min => format!("must be at least {}", show(min)),
            Limit::Between(_, max) if v > max => format!("must be at most {}", show(max)),
            Limit::Positive(_) if *v == zero => "must be more than 0".to_string(),
            Limit::Positive(max) if v > max => format!("must be at most {}", show(max)),
            Limit::Span(min, max) if v < min || v > max => format!("must be from {} to {}", show(min), show(max)),
            // Written so that NaN, which compares false with everything, fails.
            Limit::Rate(what, max) if !(*v >= zero && v <= max) => {
                format!("must be a number of {what} per second from {} to {}", show(&zero), show(max))
            }
            _ => return Ok(()),
        };
        Err(ConfigError::setting(key, problem))
    }

    /// The range as docs/CONFIG.md words it: `1 to 1024`, `at most `1h``.
    #[cfg(test)]
    pub(crate) fn describe(&self, show: fn(&T) -> String) -> String {
        let shown = |v: &T| code(&show(v));
        match self {
            Limit::NotEmpty => "not empty".to_string(),
            Limit::AtMost(max) => format!("at most {}", shown(max)),
            Limit::AtLeast(min) => format!("at least {}", shown(min)),
            Limit::Between(min, max) | Limit::Span(min, max) => format!("{} to {}", shown(min), shown(max)),
            Limit::Positive(max) => format!("more than 0, at most {}", shown(max)),
            Limit::Rate(_, max) => format!("{} to {}", shown(&T::default()), shown(max)),
        }
    }
}

/// A value in the syntax a setting is read in, for messages and docs.
/// Sizes are shown by `show_size` instead (they are `usize`, like counts).
pub(crate) trait Show {
    fn show(&self) -> String;
}

macro_rules! show_by_display {
    ($($t:ty),*) => {
        $(impl Show for $t {
            fn show(&self) -> String {
                self.to_string()
            }
        })*
    };
}
show_by_display!(SocketAddr, usize, u32, u64, f64, bool, String, Durability, crate::log::Format, crate::log::Level);

impl Show for PathBuf {
    fn show(&self) -> String {
        self.display().to_string()
    }
}

impl Show for Duration {
    fn show(&self) -> String {
        show_duration(*self)
    }
}

/// A size, as the `show` of a `size` setting.
pub(crate) fn show_bytes(n: &usize) -> String {
    show_size(*n)
}

/// What the command line needs of one setting; built by `settings!`.
pub(crate) struct Flag {
    /// The field name, which is also clap's id of the argument.
    pub name: &'static str,
    /// The flag, `name` in kebab case.
    pub long: &'static str,
    pub value_name: &'static str,
    pub help: &'static str,
    /// The default as `--help` shows it, when it shows one.
    pub shown: Option<&'static str>,
    /// Sets the value parser (and, for a switch, the optional value).
    pub parser: fn(clap::Arg) -> clap::Arg,
}

impl Flag {
    pub(crate) fn arg(&self) -> clap::Arg {
        let arg = (self.parser)(clap::Arg::new(self.name).value_name(self.value_name));
        let arg = arg.action(clap::ArgAction::Set).long(self.long);
        match self.shown {
            Some(shown) => arg.help(format!("{} [default: {shown}]", self.help)),
            None => arg.help(self.help),
        }
    }
}

/// `names` in kebab case, computed once: clap keeps `&'static str` names.
pub(crate) fn kebab_names(names: &'static [&'static str]) -> Vec<String> {
    names.iter().map(|n| n.replace('_', "-")).collect()
}

/// One environment variable of the environment layer, parsed as the flag
/// would be; a problem names the variable. An empty value counts as unset.
pub(crate) fn from_env<T>(
    env: &dyn Fn(&str) -> Option<String>,
    flag: &str,
    parse: fn(&str) -> Result<T, String>,
) -> Result<Option<T>, ConfigError> {
    let name = super::env_name(flag);
    match super::env_value(env, &name) {
        None => Ok(None),
        Some(value) => parse(&value).map(Some).map_err(|problem| ConfigError::setting(name, problem)),
    }
}

/// The all-optional layer `settings!` generates, as the TOML reader sees it.
pub(crate) trait Layer: Default {
    /// Every setting's field name, in declaration order.
    const NAMES: &'static [&'static str];
    /// The keys whose value is a table of its own (`[cluster]`), beside
    /// the settings.
    const TABLES: &'static [&'static str];
    /// [`Self::NAMES`] in kebab case, the same order.
    fn kebab() -> &'static [String];
    /// Reads the value of setting (or table) `name` from `map`; a second
    /// value for the same setting (`a-b` and `a_b` both) is an error.
    fn take_toml<'de, A: MapAccess<'de>>(&mut self, name: &str, map: &mut A) -> Result<(), A::Error>;
}

/// Reads a TOML table into a [`Layer`]. This is what serde's derive would
/// generate with `deny_unknown_fields` and each key in two spellings, with
/// the same messages; the derive cannot take the second spelling from the
/// field name.
pub(crate) fn deserialize_layer<'de, L: Layer, D: Deserializer<'de>>(d: D) -> Result<L, D::Error> {
    d.deserialize_struct("Settings", L::NAMES, LayerVisitor(PhantomData))
}

struct LayerVisitor<L>(PhantomData<L>);

impl<'de, L: Layer> Visitor<'de> for LayerVisitor<L> {
    type Value = L;

    fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("struct Settings")
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<L, A::Error> {
        let mut layer = L::default();
        while let Some(name) = map.next_key_seed(KeySeed::<L>(PhantomData))? {
            layer.take_toml(name, &mut map)?;
        }
        Ok(layer)
    }
}

/// A key of the settings table, as the field name it spells. An unknown key
/// fails while it is read, so that toml can say which line it is on.
struct KeySeed<L>(PhantomData<L>);

impl<'de, L: Layer> DeserializeSeed<'de> for KeySeed<L> {
    type Value = &'static str;

    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<&'static str, D::Error> {
        d.deserialize_identifier(self)
    }
}

impl<L: Layer> Visitor<'_> for KeySeed<L> {
    type Value = &'static str;

    fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("field identifier")
    }

    fn visit_str<E: de::Error>(self, key: &str) -> Result<&'static str, E> {
        L::NAMES
            .iter()
            .zip(L::kebab())
            .find(|(snake, kebab)| key == **snake || key == kebab.as_str())
            .map(|(snake, _)| *snake)
            .or_else(|| L::TABLES.iter().find(|t| key == **t).copied())
            .ok_or_else(|| E::unknown_field(key, L::NAMES))
    }
}

/// serde's message for a key given twice, naming the setting as the flag.
pub(crate) fn duplicate<E: de::Error>(flag: &str) -> E {
    E::custom(format_args!("duplicate field `{flag}`"))
}

/// One row of the settings table in docs/CONFIG.md; built by `settings!`.
#[cfg(test)]
pub(crate) struct DocRow {
    pub long: &'static str,
    pub value_name: &'static str,
    pub switch: bool,
    pub default: String,
    pub meaning: &'static str,
    pub range: Option<String>,
    /// Why the default `--help` shows is not the real one, if it is not.
    pub wrong_default: Option<String>,
}

/// The default column: the `--help` default in code style when it is a
/// value of the setting (`64KiB`) and as words when it is not (`number of
/// CPUs`); without one, the default value itself, or `none`.
#[cfg(test)]
pub(crate) fn doc_default<T: PartialEq>(
    shown: Option<&str>,
    parse: fn(&str) -> Result<T, String>,
    default: Option<&T>,
    show: fn(&T) -> String,
) -> (String, Option<String>) {
    match (shown, default) {
        (Some(shown), _) => match parse(shown) {
            Ok(v) if Some(&v) == default => (format!("`{shown}`"), None),
            Ok(_) => (format!("`{shown}`"), Some(format!("--help says {shown:?}, the default is not that"))),
            Err(_) => (shown.to_string(), None),
        },
        (None, Some(v)) => (format!("`{}`", show(v)), None),
        (None, None) => ("none".to_string(), None),
    }
}

/// `text` in code style, except a plain number (a range reads `1 to 1024`).
#[cfg(test)]
fn code(text: &str) -> String {
    if !text.is_empty() && text.bytes().all(|b| b.is_ascii_digit()) {
        text.to_string()
    } else {
        format!("`{text}`")
    }
}

/// The settings table of docs/CONFIG.md, `--config` first.
#[cfg(test)]
pub(crate) fn settings_table(rows: &[DocRow]) -> String {
    use std::fmt::Write as _;
    let mut out = String::from(
        "| flag | environment variable | TOML key | default | meaning |\n\
         | --- | --- | --- | --- | --- |\n\
         | `--config FILE` | `ROOMCAST_CONFIG` | — | none | TOML file with any of the keys below |\n",
    );
    for row in rows {
        let flag = if row.switch { format!("--{}", row.long) } else { format!("--{} {}", row.long, row.value_name) };
        let meaning = match &row.range {
            Some(range) => format!("{}; {range}", row.meaning),
            None => row.meaning.to_string(),
        };
        let env = super::env_name(row.long);
        // Writing to a String cannot fail.
        let _ = writeln!(out, "| `{flag}` | `{env}` | `{}` | {} | {meaning} |", row.long, row.default);
    }
    out
}

/// Declares the serve settings; see this module's comment. Each entry:
///
/// ```text
/// name: Type [syntax optional?] = default;
///     flag "VALUE", "--help line" (, default "as --help shows it")?;
///     (limit Limit::...;)?
///     docs "meaning, as docs/CONFIG.md says it";
/// ```
macro_rules! settings {
    ($(
        $field:ident : $ty:ty [$kind:ident $($opt:ident)?] = $default:expr;
            flag $value_name:literal, $help:literal $(, default $shown:literal)?;
            $(limit $limit:expr;)?
            docs $meaning:literal;
    )*) => {
        /// Everything `roomcast serve` runs with. [`Config::default`] holds the
        /// embedded defaults; docs/CONFIG.md describes each setting.
        #[derive(Debug, Clone, PartialEq)]
        pub struct Config {
            $(
                #[doc = $help]
                #[doc = ""]
                #[doc = $meaning]
                pub $field: $crate::config::declare::field_ty!($ty $(, $opt)?),
            )*
            /// From `ROOMCAST_JWT_SECRET` only; `None` means use the data directory's.
            pub jwt_secret: Option<JwtSecret>,
            /// The `[cluster]` table (with its flags and environment
            /// variables); `None`: a single node.
            pub cluster: Option<$crate::config::cluster::ClusterConfig>,
            /// The `[oauth.NAME]` tables, with their secrets from the
            /// environment; empty: no providers.
            pub oauth: Vec<$crate::config::oauth::OauthProvider>,
        }

        impl Default for Config {
            fn default() -> Self {
                Config { $($field: $default,)* jwt_secret: None, cluster: None, oauth: Vec::new() }
            }
        }

        impl Config {
            /// Each setting's own [`Limit`], in declaration order.
            fn check_each(&self) -> Result<(), ConfigError> {
                $(
                    $crate::config::declare::check!(
                        [$($limit)?],
                        Settings::long(stringify!($field)),
                        $crate::config::declare::as_option!(&self.$field $(, $opt)?),
                        $crate::config::declare::kind!(show $kind $ty)
                    );
                )*
                Ok(())
            }

            /// The settings (flag names) whose values differ between the two,
            /// in declaration order; the tables and the secret aside.
            pub fn changed_settings(&self, other: &Config) -> Vec<String> {
                let mut changed = Vec::new();
                $(
                    if self.$field != other.$field {
                        changed.push(Settings::long(stringify!($field)).to_string());
                    }
                )*
                changed
            }

            /// Takes setting `long` (a flag name) from `other`; false when
            /// there is no such setting.
            pub fn take_setting(&mut self, other: &Config, long: &str) -> bool {
                $(
                    if long == Settings::long(stringify!($field)) {
                        self.$field = other.$field.clone();
                        return true;
                    }
                )*
                false
            }
        }

        /// One layer of serve settings: flags, environment or file. Every
        /// field is optional; `None` leaves the lower layer's value in place.
        #[derive(Debug, Default)]
        struct Settings {
            $($field: Option<$ty>,)*
            /// The `[cluster]` table; the file layer only.
            cluster: Option<$crate::config::cluster::ClusterTable>,
            /// The `[oauth.NAME]` tables; the file layer only.
            oauth: Option<$crate::config::oauth::OauthTable>,
        }

        impl Settings {
            /// The flag of setting `name` (a field name).
            fn long(name: &str) -> &'static str {
                use $crate::config::declare::Layer;
                Settings::NAMES
                    .iter()
                    .zip(Settings::kebab())
                    .find(|(snake, _)| **snake == name)
                    .map_or("", |(_, kebab)| kebab.as_str())
            }

            fn flags() -> Vec<$crate::config::declare::Flag> {
                vec![$(
                    $crate::config::declare::Flag {
                        name: stringify!($field),
                        long: Settings::long(stringify!($field)),
                        value_name: $value_name,
                        help: $help,
                        shown: $crate::config::declare::optional!($($shown)?),
                        parser: $crate::config::declare::kind!(clap $kind $ty),
                    },
                )*]
            }

            /// The environment layer. Each variable is `ROOMCAST_` plus the
            /// flag name in upper snake case, parsed exactly as the flag
            /// would be; they are read in declaration order.
            fn from_env(env: &dyn Fn(&str) -> Option<String>) -> Result<Settings, ConfigError> {
                Ok(Settings {
                    $(
                        $field: $crate::config::declare::from_env(
                            env,
                            Settings::long(stringify!($field)),
                            $crate::config::declare::kind!(parse $kind $ty),
                        )?,
                    )*
                    cluster: None,
                    oauth: None,
                })
            }

            /// Overrides `config` with every setting this layer has.
            fn apply(self, config: &mut Config) {
                $(
                    if let Some(v) = self.$field {
                        config.$field = $crate::config::declare::wrap!(v $(, $opt)?);
                    }
                )*
            }

            /// The rows of the settings table in docs/CONFIG.md.
            #[cfg(test)]
            fn doc_rows() -> Vec<$crate::config::declare::DocRow> {
                let defaults = Config::default();
                vec![$({
                    let (default, wrong_default) = $crate::config::declare::doc_default(
                        $crate::config::declare::optional!($($shown)?),
                        $crate::config::declare::kind!(parse $kind $ty),
                        $crate::config::declare::as_option!(&defaults.$field $(, $opt)?),
                        $crate::config::declare::kind!(show $kind $ty),
                    );
                    $crate::config::declare::DocRow {
                        long: Settings::long(stringify!($field)),
                        value_name: $value_name,
                        switch: $crate::config::declare::kind!(is_switch $kind),
                        default,
                        meaning: $meaning,
                        range: $crate::config::declare::describe!(
                            [$($limit)?],
                            $crate::config::declare::kind!(show $kind $ty)
                        ),
                        wrong_default,
                    }
                },)*]
            }
        }

        impl $crate::config::declare::Layer for Settings {
            const NAMES: &'static [&'static str] = &[$(stringify!($field)),*];
            const TABLES: &'static [&'static str] = &["cluster", "oauth"];

            fn kebab() -> &'static [String] {
                static KEBAB: std::sync::OnceLock<Vec<String>> = std::sync::OnceLock::new();
                KEBAB.get_or_init(|| $crate::config::declare::kebab_names(Settings::NAMES))
            }

            fn take_toml<'de, A: serde::de::MapAccess<'de>>(
                &mut self,
                name: &str,
                map: &mut A,
            ) -> Result<(), A::Error> {
                if name == "cluster" {
                    if self.cluster.is_some() {
                        return Err($crate::config::declare::duplicate(name));
                    }
                    self.cluster = Some(map.next_value()?);
                    return Ok(());
                }
                if name == "oauth" {
                    if self.oauth.is_some() {
                        return Err($crate::config::declare::duplicate(name));
                    }
                    self.oauth = Some(map.next_value()?);
                    return Ok(());
                }
                $(
                    if name == stringify!($field) {
                        if self.$field.is_some() {
                            return Err($crate::config::declare::duplicate(Settings::long(name)));
                        }
                        self.$field = $crate::config::declare::kind!(toml $kind $ty, map)?;
                        return Ok(());
                    }
                )*
                // Unreachable: `name` is one of `NAMES`.
                Ok(())
            }
        }

        impl<'de> serde::Deserialize<'de> for Settings {
            fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
                $crate::config::declare::deserialize_layer(d)
            }
        }

        // What `#[derive(Args)]` would generate: the flags in declaration
        // order, in an argument group named after the struct.
        impl clap::Args for Settings {
            fn group_id() -> Option<clap::Id> {
                Some(clap::Id::from("Settings"))
            }

            fn augment_args(cmd: clap::Command) -> clap::Command {
                use $crate::config::declare::Layer;
                let group = clap::ArgGroup::new("Settings").multiple(true).args(Settings::NAMES);
                cmd.group(group).args(Settings::flags().iter().map($crate::config::declare::Flag::arg))
            }

            fn augment_args_for_update(cmd: clap::Command) -> clap::Command {
                Settings::augment_args(cmd)
            }
        }

        impl clap::FromArgMatches for Settings {
            fn from_arg_matches(matches: &clap::ArgMatches) -> Result<Self, clap::Error> {
                Settings::from_arg_matches_mut(&mut matches.clone())
            }

            fn from_arg_matches_mut(matches: &mut clap::ArgMatches) -> Result<Self, clap::Error> {
                let mut settings = Settings::default();
                settings.update_from_arg_matches_mut(matches)?;
                Ok(settings)
            }

            fn update_from_arg_matches(&mut self, matches: &clap::ArgMatches) -> Result<(), clap::Error> {
                self.update_from_arg_matches_mut(&mut matches.clone())
            }

            fn update_from_arg_matches_mut(&mut self, matches: &mut clap::ArgMatches) -> Result<(), clap::Error> {
                $(
                    if let Some(v) = $crate::config::declare::take_match::<$ty>(matches, stringify!($field))? {
                        self.$field = Some(v);
                    }
                )*
                Ok(())
            }
        }
    };
}
pub(crate) use settings;

/// The value of argument `id`, if given. A type other than the parser's is
/// a mistake in this module; it is reported as clap's own would be.
pub(crate) fn take_match<T: Clone + Send + Sync + 'static>(
    matches: &mut clap::ArgMatches,
    id: &str,
) -> Result<Option<T>, clap::Error> {
    matches.try_remove_one::<T>(id).map_err(|e| clap::Error::raw(clap::error::ErrorKind::ValueValidation, e))
}

/// The type of a [`Config`](super::Config) field: the value's, or an `Option`
/// of it for an `optional` setting.
macro_rules! field_ty {
    ($t:ty) => { $t };
    ($t:ty, optional) => { Option<$t> };
}
pub(crate) use field_ty;

/// A layer's value as the [`Config`](super::Config) field takes it.
macro_rules! wrap {
    ($v:expr) => {
        $v
    };
    ($v:expr, optional) => {
        Some($v)
    };
}
pub(crate) use wrap;

/// A [`Config`](super::Config) field as an `Option` of a reference: `None`
/// only for an `optional` setting that is unset.
macro_rules! as_option {
    ($v:expr) => {
        Some($v)
    };
    ($v:expr, optional) => {
        ($v).as_ref()
    };
}
pub(crate) use as_option;

/// `Some` of a literal given, or `None`.
macro_rules! optional {
    () => {
        None
    };
    ($s:literal) => {
        Some($s)
    };
}
pub(crate) use optional;

/// Checks a setting's limit, when it has one.
macro_rules! check {
    ([], $key:expr, $value:expr, $show:expr) => {};
    ([$limit:expr], $key:expr, $value:expr, $show:expr) => {
        $crate::config::declare::Limit::check(&$limit, $key, $value, $show)?;
    };
}
pub(crate) use check;

/// A setting's range for the docs, when it has a limit.
#[cfg(test)]
macro_rules! describe {
    ([], $show:expr) => {
        None
    };
    ([$limit:expr], $show:expr) => {
        Some($crate::config::declare::Limit::describe(&$limit, $show))
    };
}
#[cfg(test)]
pub(crate) use describe;

/// What a value syntax means for each place a setting is read or shown.
macro_rules! kind {
    (parse plain $t:ty) => {
        $crate::config::values::parse_from_str::<$t>
    };
    (parse size $t:ty) => {
        $crate::config::values::parse_size
    };
    (parse duration $t:ty) => {
        $crate::config::values::parse_duration
    };
    (parse switch $t:ty) => {
        $crate::config::values::parse_bool
    };

    (clap plain $t:ty) => {
        |arg: clap::Arg| arg.value_parser(clap::value_parser!($t))
    };
    (clap size $t:ty) => {
        |arg: clap::Arg| arg.value_parser($crate::config::values::parse_size)
    };
    (clap duration $t:ty) => {
        |arg: clap::Arg| arg.value_parser($crate::config::values::parse_duration)
    };
    (clap switch $t:ty) => {
        |arg: clap::Arg| {
            arg.value_parser($crate::config::values::parse_bool)
                .num_args(0..=1)
                .require_equals(true)
                .default_missing_value("true")
        }
    };

    (toml plain $t:ty, $map:expr) => {
        $map.next_value::<Option<$t>>()
    };
    (toml size $t:ty, $map:expr) => {
        $map.next_value::<$crate::config::values::TomlSize>().map(|v| Some(v.0))
    };
    (toml duration $t:ty, $map:expr) => {
        $map.next_value::<$crate::config::values::TomlDuration>().map(|v| Some(v.0))
    };
    (toml switch $t:ty, $map:expr) => {
        $map.next_value::<Option<bool>>()
    };

    (show size $t:ty) => {
        $crate::config::declare::show_bytes
    };
    (show $kind:ident $t:ty) => {
        <$t as $crate::config::declare::Show>::show
    };

    (is_switch switch) => {
        true
    };
    (is_switch $kind:ident) => {
        false
    };
}
pub(crate) use kind;
