//! The topology file read by `lattice up` and `lattice routes`: which
//! instances run on this machine, with which roles, listening where, and the
//! homeserver configuration they share.
//!
//! ```yaml
//! homeserver: ../var/homeserver.yaml   # relative to this file
//! settings:                            # homeserver keys set for every instance
//!   redis: { url: "redis://127.0.0.1:6390" }
//!   stream_writers: { events: [events1] }
//! instances:
//!   - { name: main, roles: [client, sync, ...], listen: "127.0.0.1:8008" }
//!   - { name: events1, roles: [events], listen: "127.0.0.1:8010" }
//! ```
//!
//! `settings` exists so that one homeserver file (with its secrets: signing
//! key, database password) serves every topology, while the keys that describe
//! a topology (`instance_map`, `stream_writers`, ...) live beside the instances
//! they describe. Children get them as `LATTICE__...` environment variables,
//! one per leaf, unless the environment already sets that leaf: like
//! everywhere else in Lattice, the environment overrides files.
//!
//! Mistakes are reported all at once, one line each, naming the key.

use std::collections::HashMap;
use std::fmt;
use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};

use figment::providers::{Env, Format, Serialized, Yaml};
use figment::value::{Dict, Value};
use figment::Figment;
use serde::Deserialize;

use crate::config::{Config, MAIN_INSTANCE};
use crate::roles::Role;

/// The prefix of the environment variables the homeserver configuration reads.
const ENV_PREFIX: &str = "LATTICE__";

/// A parsed and checked topology.
#[derive(Debug, Clone)]
pub struct Topology {
    /// The file it was read from.
    pub path: PathBuf,
    /// The homeserver configuration file, resolved against the topology
    /// file's directory.
    pub homeserver: PathBuf,
    /// Homeserver keys every instance gets on top of that file.
    pub settings: Dict,
    /// In file order: the order instances start in, and of nginx upstreams.
    pub instances: Vec<Instance>,
}

/// One process of the topology.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Instance {
    pub name: String,
    /// Every role when the file gives none (the monolith).
    pub roles: Vec<Role>,
    pub listen: SocketAddr,
}

impl Instance {
    pub fn has(&self, role: Role) -> bool {
        self.roles.contains(&role)
    }

    /// Whether it runs every role, so that `--roles` can be left out.
    pub fn runs_every_role(&self) -> bool {
        Role::ALL.iter().all(|role| self.has(*role))
    }

    /// `client,sync`, as `--roles` takes them.
    pub fn role_list(&self) -> String {
        self.roles
            .iter()
            .map(|r| r.name())
            .collect::<Vec<_>>()
            .join(",")
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct TopologyFile {
    homeserver: PathBuf,
    #[serde(default)]
    settings: Dict,
    instances: Vec<InstanceFile>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct InstanceFile {
    name: String,
    #[serde(default)]
    roles: Option<Vec<String>>,
    listen: SocketAddr,
}

/// One thing wrong, with the key it is about.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Mistake {
    /// `topology` or `homeserver config`.
    pub file: &'static str,
    pub key: String,
    pub message: String,
}

impl Mistake {
    fn topology(key: impl Into<String>, message: impl Into<String>) -> Mistake {
        Mistake {
            file: "topology",
            key: key.into(),
            message: message.into(),
        }
    }

    fn homeserver(key: impl Into<String>, message: impl Into<String>) -> Mistake {
        Mistake {
            file: "homeserver config",
            key: key.into(),
            message: message.into(),
        }
    }
}

impl fmt::Display for Mistake {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: key `{}`: {}", self.file, self.key, self.message)
    }
}

#[derive(Debug, thiserror::Error)]
pub enum TopologyError {
    /// The file could not be read or parsed; figment's message names the key.
    #[error("topology: {0}")]
    Load(String),
    #[error("homeserver config: {0}")]
    Homeserver(String),
    /// One line per mistake.
    #[error("{}", join_lines(.0))]
    Mistakes(Vec<Mistake>),
}

fn join_lines(mistakes: &[Mistake]) -> String {
    mistakes
        .iter()
        .map(Mistake::to_string)
        .collect::<Vec<_>>()
        .join("\n")
}

impl Topology {
    /// Reads and checks `path` on its own (without the homeserver config).
    pub fn load(path: &Path) -> Result<Topology, TopologyError> {
        if !path.exists() {
            return Err(TopologyError::Load(format!(
                "file {} does not exist",
                path.display()
            )));
        }
        Self::from_figment(Figment::new().merge(Yaml::file(path)), path)
    }

    /// Parses a topology; `path` resolves the relative `homeserver` path.
    pub fn from_figment(figment: Figment, path: &Path) -> Result<Topology, TopologyError> {
        let file: TopologyFile = figment.extract().map_err(|error| {
            let first = error.into_iter().next();
            TopologyError::Load(first.map(|e| e.to_string()).unwrap_or_default())
        })?;
        let mut mistakes = Vec::new();
        let mut instances = Vec::new();
        for instance in file.instances {
            let key = format!("instances.{}.roles", instance.name);
            let roles = match instance.roles {
                None => Role::ALL.to_vec(),
                Some(names) if names.is_empty() => {
                    mistakes.push(Mistake::topology(
                        key,
                        "is empty; leave `roles` out to run every role",
                    ));
                    Vec::new()
                }
                Some(names) => {
                    let mut roles = Vec::new();
                    for name in names {
                        match Role::ALL.into_iter().find(|r| r.name() == name.trim()) {
                            Some(role) if !roles.contains(&role) => roles.push(role),
                            Some(_) => {}
                            None => mistakes.push(Mistake::topology(
                                key.clone(),
                                format!("unknown role `{name}` (known: {})", known_roles()),
                            )),
                        }
                    }
                    roles
                }
            };
            instances.push(Instance {
                name: instance.name,
                roles,
                listen: instance.listen,
            });
        }
        let directory = path.parent().unwrap_or(Path::new("."));
        let homeserver = directory.join(&file.homeserver);
        let homeserver = homeserver.canonicalize().unwrap_or(homeserver);
        let topology = Topology {
            path: path.to_owned(),
            homeserver,
            settings: file.settings,
            instances,
        };
        mistakes.extend(topology.mistakes());
        if mistakes.is_empty() {
            Ok(topology)
        } else {
            Err(TopologyError::Mistakes(mistakes))
        }
    }

    /// What is wrong with the topology on its own.
    fn mistakes(&self) -> Vec<Mistake> {
        let mut mistakes = Vec::new();
        if self.instances.is_empty() {
            mistakes.push(Mistake::topology("instances", "lists no instance"));
        }
        let mut names: HashMap<&str, usize> = HashMap::new();
        let mut listeners: HashMap<SocketAddr, &str> = HashMap::new();
        for instance in &self.instances {
            let name = instance.name.as_str();
            if !valid_instance_name(name) {
                mistakes.push(Mistake::topology(
                    "instances",
                    format!(
                        "instance name `{name}` must be lowercase letters, digits, `_` and `-` \
                         (names are keys of `instance_map`)"
                    ),
                ));
            }
            *names.entry(name).or_default() += 1;
            if names[name] == 2 {
                mistakes.push(Mistake::topology(
                    "instances",
                    format!("the instance name `{name}` is used more than once"),
                ));
            }
            let key = format!("instances.{name}.listen");
            if instance.listen.port() == 0 {
                mistakes.push(Mistake::topology(
                    key.clone(),
                    "needs a fixed port, not 0, so that others can reach the instance",
                ));
            }
            match listeners.get(&instance.listen) {
                Some(other) => mistakes.push(Mistake::topology(
                    key,
                    format!(
                        "{} is already the listen address of `{other}`",
                        instance.listen
                    ),
                )),
                None => {
                    listeners.insert(instance.listen, name);
                }
            }
        }
        let uncovered: Vec<String> = Role::ALL
            .iter()
            .filter(|role| !self.instances.iter().any(|i| i.has(**role)))
            .map(|role| format!("`{}`", role.name()))
            .collect();
        if !uncovered.is_empty() && !self.instances.is_empty() {
            mistakes.push(Mistake::topology(
                "instances",
                format!(
                    "no instance has the role{} {}",
                    if uncovered.len() > 1 { "s" } else { "" },
                    uncovered.join(", ")
                ),
            ));
        }
        if self.settings.contains_key("listen") {
            mistakes.push(Mistake::topology(
                "settings.listen",
                "each instance's `listen` sets this; remove it from `settings`",
            ));
        }
        mistakes
    }

    pub fn instance(&self, name: &str) -> Option<&Instance> {
        self.instances.iter().find(|i| i.name == name)
    }

    /// The instances with `role`, in file order.
    pub fn instances_with(&self, role: Role) -> impl Iterator<Item = &Instance> {
        self.instances.iter().filter(move |i| i.has(role))
    }

    /// The homeserver configuration as the instances will see it (the file,
    /// then `settings`, then the environment), checked like `lattice serve`
    /// checks it.
    pub fn homeserver_config(&self) -> Result<Config, TopologyError> {
        if !self.homeserver.exists() {
            return Err(TopologyError::Homeserver(format!(
                "file {} (named by `homeserver` in {}) does not exist; `make run` writes \
                 var/homeserver.yaml, or run `lattice generate-config --server-name NAME > FILE`",
                self.homeserver.display(),
                self.path.display()
            )));
        }
        let figment = Figment::new()
            .merge(Yaml::file(&self.homeserver))
            .merge(Serialized::defaults(&self.settings))
            .merge(Env::prefixed(ENV_PREFIX).split("__").ignore(&["listen"]));
        Config::from_figment(figment).map_err(|e| TopologyError::Homeserver(e.to_string()))
    }

    /// Where the topology and the homeserver configuration disagree: every
    /// writer and duty the config names must be an instance with that role,
    /// and every instance with the pusher or federation sender role must be
    /// named (the others join by shard lease); `instance_map` must
    /// say where the instances listen; a topology of several instances needs
    /// Redis and a `replication_secret`.
    pub fn check_against(&self, config: &Config) -> Vec<Mistake> {
        let mut mistakes = Vec::new();
        for spec in crate::streams::registry::configured_streams() {
            let stream = spec.name;
            let Some(role) = Role::writing(stream) else {
                continue;
            };
            self.check_duty(
                &mut mistakes,
                &format!("stream_writers.{stream}"),
                role,
                config.stream_writers.contains_key(stream),
                &config.stream_writers(stream),
                Listing::MayOmit,
            );
        }
        for (key, role, instances) in [
            ("pusher_instances", Role::Pusher, &config.pusher_instances),
            (
                "federation_sender_instances",
                Role::FederationSender,
                &config.federation_sender_instances,
            ),
        ] {
            let named = if instances.is_empty() {
                vec![MAIN_INSTANCE.to_owned()]
            } else {
                instances.clone()
            };
            self.check_duty(
                &mut mistakes,
                key,
                role,
                !instances.is_empty(),
                &named,
                Listing::Complete,
            );
        }
        let background = config
            .run_background_tasks_on
            .clone()
            .unwrap_or_else(|| MAIN_INSTANCE.to_owned());
        self.check_duty(
            &mut mistakes,
            "run_background_tasks_on",
            Role::Background,
            config.run_background_tasks_on.is_some(),
            &[background],
            Listing::MayOmit,
        );
        self.check_instance_map(&mut mistakes, config);
        if self.instances.len() > 1 && config.redis.url.is_none() {
            mistakes.push(Mistake::homeserver(
                "redis.url",
                format!(
                    "not set, but a topology of {} instances needs Redis",
                    self.instances.len()
                ),
            ));
        }
        let split = self.instances.len() > 1
            || self
                .instances
                .iter()
                .any(|instance| config.is_split(&instance.name, &instance.roles));
        if split && config.replication_secret.is_none() {
            mistakes.push(Mistake::homeserver(
                "replication_secret",
                format!(
                    "not set, but a topology of {} instances needs one to authenticate their \
                     messages (`lattice generate-config` writes one; `openssl rand -hex 32` \
                     makes one)",
                    self.instances.len()
                ),
            ));
        }
        mistakes
    }

    /// Every instance `named` (from config `key`) must have `role`; with
    /// [`Listing::Complete`], every instance with `role` must be named too.
    fn check_duty(
        &self,
        mistakes: &mut Vec<Mistake>,
        key: &str,
        role: Role,
        configured: bool,
        named: &[String],
        listing: Listing,
    ) {
        let role_name = role.name();
        for name in named {
            match self.instance(name) {
                None if configured => mistakes.push(Mistake::homeserver(
                    key,
                    format!("`{name}` is not an instance of the topology"),
                )),
                None => mistakes.push(Mistake::homeserver(
                    key,
                    format!(
                        "not set, so `{name}` would do the work of the `{role_name}` role, \
                         but the topology has no instance `{name}`; name the instances \
                         with that role ({})",
                        self.names_with(role)
                    ),
                )),
                Some(instance) if !instance.has(role) => mistakes.push(Mistake::homeserver(
                    key,
                    format!("`{name}` does not have the `{role_name}` role in the topology"),
                )),
                Some(_) => {}
            }
        }
        if listing == Listing::MayOmit {
            return;
        }
        for instance in self.instances_with(role) {
            if !named.contains(&instance.name) {
                let message = if configured {
                    format!(
                        "`{}` has the `{role_name}` role in the topology but is not listed",
                        instance.name
                    )
                } else {
                    format!(
                        "not set, so only `{MAIN_INSTANCE}` does the work of the \
                         `{role_name}` role, but `{}` has that role too",
                        instance.name
                    )
                };
                mistakes.push(Mistake::homeserver(key, message));
            }
        }
    }

    fn check_instance_map(&self, mistakes: &mut Vec<Mistake>, config: &Config) {
        for (name, location) in &config.instance_map {
            let key = format!("instance_map.{name}");
            let Some(instance) = self.instance(name) else {
                mistakes.push(Mistake::homeserver(
                    key,
                    format!("the topology has no instance `{name}`"),
                ));
                continue;
            };
            let host_differs = match location.host.parse::<IpAddr>() {
                Ok(ip) => !instance.listen.ip().is_unspecified() && ip != instance.listen.ip(),
                Err(_) => false,
            };
            if location.port != instance.listen.port() || host_differs {
                mistakes.push(Mistake::homeserver(
                    key,
                    format!(
                        "says {}:{} but the topology has `{name}` listen on {}",
                        location.host, location.port, instance.listen
                    ),
                ));
            }
        }
        if self.instances.len() > 1 {
            for instance in &self.instances {
                if !config.instance_map.contains_key(&instance.name) {
                    mistakes.push(Mistake::homeserver(
                        "instance_map",
                        format!(
                            "has no entry for `{}` (the topology has it listen on {})",
                            instance.name, instance.listen
                        ),
                    ));
                }
            }
        }
    }

    fn names_with(&self, role: Role) -> String {
        let names: Vec<String> = self
            .instances_with(role)
            .map(|i| format!("`{}`", i.name))
            .collect();
        if names.is_empty() {
            "none has".into()
        } else {
            names.join(", ")
        }
    }

    /// The environment variables that give an instance its listen address
    /// and the topology's `settings`, leaving out any setting the inherited
    /// environment already sets (`inherited` holds the names of its
    /// variables).
    pub fn child_env(&self, instance: &Instance, inherited: &[String]) -> Vec<(String, String)> {
        let inherited: Vec<String> = inherited
            .iter()
            .filter_map(|name| strip_prefix_ignore_case(name, ENV_PREFIX))
            .map(|key| key.to_ascii_lowercase())
            .collect();
        let mut leaves = Vec::new();
        for (key, value) in &self.settings {
            flatten(&mut leaves, key.to_ascii_lowercase(), value);
        }
        let mut env: Vec<(String, String)> = leaves
            .into_iter()
            .filter(|(path, _)| {
                // Set by the environment: this leaf, a table above it, or a key below it.
                !inherited.iter().any(|name| {
                    name == path
                        || path.starts_with(&format!("{name}__"))
                        || name.starts_with(&format!("{path}__"))
                })
            })
            .map(|(path, value)| (format!("{ENV_PREFIX}{}", path.to_ascii_uppercase()), value))
            .collect();
        env.push((format!("{ENV_PREFIX}LISTEN"), instance.listen.to_string()));
        env
    }
}

/// Whether a key naming the instances that do a role's work must name all
/// of them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Listing {
    /// The work is placed by the key alone (pushers, federation senders).
    Complete,
    /// The work is spread by shard leases over every instance with the
    /// role (`crate::shards`): the stream writers and the background
    /// duties. An instance with the role that the key leaves out joins as
    /// a member once everyone has seen it; the key only lets the ones it
    /// names own shards from their first heartbeat.
    MayOmit,
}

fn known_roles() -> String {
    Role::ALL.map(Role::name).join(", ")
}

fn valid_instance_name(name: &str) -> bool {
    !name.is_empty()
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_' || b == b'-')
}

fn strip_prefix_ignore_case<'a>(name: &'a str, prefix: &str) -> Option<&'a str> {
    let head = name.get(..prefix.len())?;
    head.eq_ignore_ascii_case(prefix)
        .then(|| &name[prefix.len()..])
}

/// Appends `(path, value)` for every leaf under `value`, the path's parts
/// joined with `__` as the environment spells nesting. Lists are leaves.
fn flatten(out: &mut Vec<(String, String)>, path: String, value: &Value) {
    match value {
        Value::Dict(_, dict) if !dict.is_empty() => {
            for (key, value) in dict {
                flatten(out, format!("{path}__{}", key.to_ascii_lowercase()), value);
            }
        }
        Value::Empty(..) => {}
        value => out.push((path, encode(value))),
    }
}

/// `value` in the syntax figment parses environment variables with: quoted
/// strings (so that `"8010"` stays a string), bare numbers and booleans,
/// `[a, b]` and `{k = v}`.
fn encode(value: &Value) -> String {
    match value {
        Value::String(_, s) => quote(s),
        Value::Char(_, c) => quote(&c.to_string()),
        Value::Bool(_, b) => b.to_string(),
        Value::Num(_, n) => match (n.to_f64(), n.to_u128(), n.to_i128()) {
            (Some(f), _, _) => format!("{f:?}"),
            (_, Some(u), _) => u.to_string(),
            (_, _, Some(i)) => i.to_string(),
            _ => "0".into(),
        },
        Value::Empty(..) => quote(""),
        Value::Array(_, items) => {
            format!(
                "[{}]",
                items.iter().map(encode).collect::<Vec<_>>().join(",")
            )
        }
        Value::Dict(_, dict) => format!(
            "{{{}}}",
            dict.iter()
                .map(|(k, v)| format!("{}={}", quote(k), encode(v)))
                .collect::<Vec<_>>()
                .join(",")
        ),
    }
}

fn quote(s: &str) -> String {
    let mut quoted = String::with_capacity(s.len() + 2);
    quoted.push('"');
    for c in s.chars() {
        match c {
            '"' => quoted.push_str("\\\""),
            '\\' => quoted.push_str("\\\\"),
            '\t' => quoted.push(c),
            c if (c as u32) < 0x20 || c == '\u{7f}' => {
                quoted.push_str(&format!("\\u{:04x}", c as u32))
            }
            c => quoted.push(c),
        }
    }
    quoted.push('"');
    quoted
}

#[cfg(test)]
mod tests {
    use super::*;

    const ALL_BUT_EVENTS_AND_SYNC: &str = "client, sync, typing, to_device, account_data, \
        receipts, presence, device_lists, push_rules, pusher, federation_sender, \
        federation_reader, media, background";

    fn parse(yaml: &str) -> Result<Topology, TopologyError> {
        Topology::from_figment(
            Figment::new().merge(Yaml::string(yaml)),
            Path::new("config/test.yaml"),
        )
    }

    fn split() -> String {
        format!(
            "homeserver: ../var/homeserver.yaml
settings:
  redis: {{ url: \"redis://127.0.0.1:6390\" }}
  instance_map:
    main: {{ host: 127.0.0.1, port: 8008 }}
    events1: {{ host: 127.0.0.1, port: 8010 }}
    sync2: {{ host: 127.0.0.1, port: 8011 }}
  stream_writers: {{ events: [events1] }}
instances:
  - {{ name: main, roles: [{ALL_BUT_EVENTS_AND_SYNC}], listen: \"127.0.0.1:8008\" }}
  - {{ name: events1, roles: [events], listen: \"127.0.0.1:8010\" }}
  - {{ name: sync2, roles: [sync], listen: \"127.0.0.1:8011\" }}
"
        )
    }

    fn mistakes(yaml: &str) -> Vec<String> {
        match parse(yaml) {
            Err(TopologyError::Mistakes(mistakes)) => {
                mistakes.iter().map(Mistake::to_string).collect()
            }
            other => panic!("expected mistakes, got {other:?}"),
        }
    }

    fn base_yaml() -> String {
        crate::config::sample(
            "example.org",
            &crate::signing_key::SigningKey::generate().to_config_string(),
        )
    }

    /// The homeserver config `lattice up` would compute from a sample file
    /// and the topology's settings.
    fn config_of(topology: &Topology) -> Config {
        Config::from_figment(
            Figment::new()
                .merge(Yaml::string(&base_yaml()))
                .merge(Serialized::defaults(&topology.settings)),
        )
        .expect("a valid homeserver config")
    }

    #[test]
    fn a_split_topology_parses() {
        let topology = parse(&split()).expect("valid");
        assert_eq!(topology.instances.len(), 3);
        // Resolved when the file exists (after `make run`), as-is otherwise.
        let expected = Path::new("config/../var/homeserver.yaml");
        assert_eq!(
            topology.homeserver,
            expected.canonicalize().unwrap_or(expected.to_path_buf())
        );
        let events1 = topology.instance("events1").expect("events1");
        assert_eq!(events1.roles, vec![Role::Events]);
        assert_eq!(events1.role_list(), "events");
        assert!(!events1.runs_every_role());
        let sync: Vec<_> = topology
            .instances_with(Role::Sync)
            .map(|i| &i.name)
            .collect();
        assert_eq!(sync, ["main", "sync2"]);
        assert!(topology.check_against(&config_of(&topology)).is_empty());
    }

    #[test]
    fn the_sample_topologies_load_and_agree_with_their_settings() {
        let directory = Path::new(env!("CARGO_MANIFEST_DIR")).join("config");
        for (file, instances) in [("monolith.yaml", 1), ("split.yaml", 3), ("sharded.yaml", 6)] {
            let topology = Topology::load(&directory.join(file))
                .unwrap_or_else(|e| panic!("config/{file}: {e}"));
            assert_eq!(topology.instances.len(), instances, "{file}");
            assert!(
                topology.homeserver.ends_with("var/homeserver.yaml"),
                "{file}"
            );
            let mistakes = topology.check_against(&config_of(&topology));
            assert!(mistakes.is_empty(), "config/{file}: {mistakes:#?}");
        }
    }

    #[test]
    fn roles_left_out_mean_every_role() {
        let topology =
            parse("homeserver: h.yaml\ninstances: [{ name: main, listen: \"127.0.0.1:8008\" }]")
                .expect("valid");
        assert!(topology.instances[0].runs_every_role());
        assert!(topology.check_against(&config_of(&topology)).is_empty());
    }

    #[test]
    fn unknown_keys_and_bad_values_are_named() {
        let error = parse("homeserver: h.yaml\ninstances: []\nextra: 1")
            .expect_err("a mistake")
            .to_string();
        assert!(error.contains("extra"), "{error}");
        let error = parse(
            "homeserver: h.yaml\ninstances: [{ name: a, listen: \"127.0.0.1:1\", rolez: [] }]",
        )
        .expect_err("a mistake")
        .to_string();
        assert!(error.contains("rolez"), "{error}");
        let error = parse("homeserver: h.yaml\ninstances: [{ name: a, listen: nowhere }]")
            .expect_err("a mistake")
            .to_string();
        assert!(error.contains("listen"), "{error}");
        let error = parse("instances: []").expect_err("a mistake").to_string();
        assert!(error.contains("homeserver"), "{error}");
    }

    #[test]
    fn topology_mistakes_are_named_one_per_line() {
        let cases = [
            (
                "instances: []",
                "topology: key `instances`: lists no instance",
            ),
            (
                "instances: [{ name: main, listen: \"127.0.0.1:8008\" }, { name: main, roles: [sync], listen: \"127.0.0.1:8009\" }]",
                "topology: key `instances`: the instance name `main` is used more than once",
            ),
            (
                "instances: [{ name: main, listen: \"127.0.0.1:8008\" }, { name: sync2, roles: [sync], listen: \"127.0.0.1:8008\" }]",
                "topology: key `instances.sync2.listen`: 127.0.0.1:8008 is already the listen address of `main`",
            ),
            (
                "instances: [{ name: main, roles: [client, evnts], listen: \"127.0.0.1:8008\" }]",
                "topology: key `instances.main.roles`: unknown role `evnts` (known: client, sync, events,",
            ),
            (
                "instances: [{ name: main, roles: [client, sync], listen: \"127.0.0.1:8008\" }]",
                "topology: key `instances`: no instance has the roles `events`, `typing`,",
            ),
            (
                "instances: [{ name: main, roles: [], listen: \"127.0.0.1:8008\" }]",
                "topology: key `instances.main.roles`: is empty",
            ),
            (
                "instances: [{ name: Main, listen: \"127.0.0.1:8008\" }]",
                "topology: key `instances`: instance name `Main` must be lowercase",
            ),
            (
                "instances: [{ name: main, listen: \"127.0.0.1:0\" }]",
                "topology: key `instances.main.listen`: needs a fixed port",
            ),
            (
                "settings: { listen: \"127.0.0.1:1\" }\ninstances: [{ name: main, listen: \"127.0.0.1:8008\" }]",
                "topology: key `settings.listen`",
            ),
        ];
        for (yaml, expected) in cases {
            let lines = mistakes(&format!("homeserver: h.yaml\n{yaml}"));
            assert!(
                lines.iter().any(|line| line.starts_with(expected)),
                "{yaml}: {lines:#?}"
            );
        }
        // Several mistakes: all reported, each on its own line.
        let error = parse(
            "homeserver: h.yaml\ninstances: [{ name: a, roles: [bogus], listen: \"127.0.0.1:1\" }, { name: a, listen: \"127.0.0.1:1\" }]",
        )
        .expect_err("a mistake")
        .to_string();
        assert_eq!(error.lines().count(), 3, "{error}");
    }

    #[test]
    fn disagreements_with_the_homeserver_config_are_named() {
        use crate::config::OneOrMany;
        let topology = parse(&split()).expect("valid");
        let writers = |stream: &str, names: &[&str]| {
            let mut config = config_of(&topology);
            config.stream_writers.insert(
                stream.into(),
                OneOrMany::Many(names.iter().map(|n| n.to_string()).collect()),
            );
            config
        };
        let mut pushers = config_of(&topology);
        pushers.pusher_instances = vec!["sync2".into()];
        let mut background = config_of(&topology);
        background.run_background_tasks_on = Some("events1".into());
        let mut ghost = config_of(&topology);
        ghost.federation_sender_instances = vec!["ghost".into()];
        let cases = [
            (
                writers("events", &["main"]),
                "homeserver config: key `stream_writers.events`: `main` does not have the `events` role in the topology",
            ),
            (
                pushers.clone(),
                "homeserver config: key `pusher_instances`: `main` has the `pusher` role in the topology but is not listed",
            ),
            (
                pushers,
                "homeserver config: key `pusher_instances`: `sync2` does not have the `pusher` role in the topology",
            ),
            (
                background,
                "homeserver config: key `run_background_tasks_on`: `events1` does not have the `background` role in the topology",
            ),
            (
                ghost,
                "homeserver config: key `federation_sender_instances`: `ghost` is not an instance of the topology",
            ),
        ];
        // A writer or background instance the key leaves out joins by lease.
        let grown = parse(
            &(split()
                .replace(
                    "    sync2: { host: 127.0.0.1, port: 8011 }\n",
                    "    sync2: { host: 127.0.0.1, port: 8011 }\n    events2: { host: 127.0.0.1, port: 8012 }\n",
                )
                .replace("roles: [sync]", "roles: [sync, background]")
                + "  - { name: events2, roles: [events], listen: \"127.0.0.1:8012\" }\n"),
        )
        .expect("valid");
        assert_eq!(grown.instances_with(Role::Events).count(), 2);
        assert_eq!(grown.instances_with(Role::Background).count(), 2);
        for omitted in ["stream_writers.events", "run_background_tasks_on"] {
            let lines: Vec<String> = grown
                .check_against(&config_of(&grown))
                .iter()
                .map(Mistake::to_string)
                .collect();
            assert!(
                !lines.iter().any(|line| line.contains(omitted)),
                "{omitted}: {lines:#?}"
            );
        }
        for (config, expected) in cases {
            let lines: Vec<String> = topology
                .check_against(&config)
                .iter()
                .map(Mistake::to_string)
                .collect();
            assert!(
                lines.iter().any(|line| line == expected),
                "{expected}: {lines:#?}"
            );
        }
    }

    #[test]
    fn a_monolith_named_otherwise_needs_its_writers_named() {
        let topology =
            parse("homeserver: h.yaml\ninstances: [{ name: solo, listen: \"127.0.0.1:8008\" }]")
                .expect("valid");
        let lines: Vec<String> = topology
            .check_against(&config_of(&topology))
            .iter()
            .map(Mistake::to_string)
            .collect();
        assert!(lines.iter().any(|l| l.starts_with(
            "homeserver config: key `stream_writers.events`: not set, so `main` would do the work of the `events` role, but the topology has no instance `main`; name the instances with that role (`solo`)"
        )), "{lines:#?}");
        assert!(lines
            .iter()
            .any(|l| l.starts_with("homeserver config: key `run_background_tasks_on`: not set")));
    }

    #[test]
    fn instance_map_and_redis_must_match_a_split_topology() {
        let yaml = split()
            .replace("port: 8011", "port: 8012")
            .replace("    main: { host: 127.0.0.1, port: 8008 }\n", "")
            .replace("  redis: { url: \"redis://127.0.0.1:6390\" }\n", "");
        let topology = parse(&yaml).expect("valid on its own");
        let lines: Vec<String> = topology
            .check_against(&config_of(&topology))
            .iter()
            .map(Mistake::to_string)
            .collect();
        for expected in [
            "homeserver config: key `instance_map.sync2`: says 127.0.0.1:8012 but the topology has `sync2` listen on 127.0.0.1:8011",
            "homeserver config: key `instance_map`: has no entry for `main` (the topology has it listen on 127.0.0.1:8008)",
            "homeserver config: key `redis.url`: not set, but a topology of 3 instances needs Redis",
        ] {
            assert!(lines.iter().any(|l| l == expected), "{expected}: {lines:#?}");
        }
        assert_eq!(lines.len(), 3, "{lines:#?}");
    }

    #[test]
    fn a_split_topology_needs_a_replication_secret() {
        let topology = parse(&split()).expect("valid");
        let mut config = config_of(&topology);
        config.replication_secret = None;
        let lines: Vec<String> = topology
            .check_against(&config)
            .iter()
            .map(Mistake::to_string)
            .collect();
        assert_eq!(lines.len(), 1, "{lines:#?}");
        assert!(
            lines[0].starts_with(
                "homeserver config: key `replication_secret`: not set, but a topology of 3 instances needs one"
            ),
            "{lines:#?}"
        );
        // The monolith needs none.
        let monolith =
            parse("homeserver: h.yaml\ninstances: [{ name: main, listen: \"127.0.0.1:8008\" }]")
                .expect("valid");
        let mut config = config_of(&monolith);
        config.replication_secret = None;
        assert!(monolith.check_against(&config).is_empty());
    }

    #[test]
    fn children_get_the_settings_as_environment_leaves() {
        let topology = parse(&split()).expect("valid");
        let events1 = topology.instance("events1").expect("events1");
        let env = topology.child_env(events1, &["PATH".into(), "LATTICE__REDIS__URL".into()]);
        let get = |name: &str| env.iter().find(|(n, _)| n == name).map(|(_, v)| v.as_str());
        assert_eq!(get("LATTICE__LISTEN"), Some("127.0.0.1:8010"));
        assert_eq!(
            get("LATTICE__STREAM_WRITERS__EVENTS"),
            Some(r#"["events1"]"#)
        );
        assert_eq!(get("LATTICE__INSTANCE_MAP__SYNC2__PORT"), Some("8011"));
        assert_eq!(
            get("LATTICE__INSTANCE_MAP__SYNC2__HOST"),
            Some(r#""127.0.0.1""#)
        );
        // The environment already sets it: it wins.
        assert_eq!(get("LATTICE__REDIS__URL"), None);

        // What a child reads back from those variables is the settings.
        let mut figment = Figment::new().merge(Yaml::string(&base_yaml()));
        for (name, value) in &env {
            let key = name["LATTICE__".len()..]
                .to_ascii_lowercase()
                .replace("__", ".");
            let value: Value = value.parse().expect("infallible");
            figment = figment.merge(Serialized::default(&key, value));
        }
        let config = Config::from_figment(figment).expect("valid");
        assert_eq!(config.listen.to_string(), "127.0.0.1:8010");
        assert_eq!(config.stream_writers("events"), ["events1"]);
        assert_eq!(config.instance_map["sync2"].port, 8011);
        assert_eq!(config.instance_map["sync2"].host, "127.0.0.1");
    }

    #[test]
    fn encoded_values_parse_back() {
        let cases: Vec<Value> = vec![
            "a \"quoted\" \\ string\nwith a newline".into(),
            "8010".into(),
            "true".into(),
            Value::from(8010u16),
            Value::from(2.5f64),
            Value::from(true),
            Value::from(vec!["events1", "events2"]),
        ];
        for value in cases {
            let encoded = encode(&value);
            let parsed: Value = encoded.parse().expect("infallible");
            assert_eq!(
                serde_json::to_value(&parsed).ok(),
                serde_json::to_value(&value).ok(),
                "{encoded}"
            );
        }
    }
}
