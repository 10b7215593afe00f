//! The `[cluster]` settings: which node this process is, the nodes of the
//! cluster and the secret their links prove they share; how the table is
//! read from the settings file, merged with its flags and environment
//! variables, and checked.

use std::fmt;
use std::time::Duration;

use serde::de::{self, Deserialize, DeserializeSeed, Deserializer, MapAccess, Visitor};

use super::values::{show_duration, TomlDuration, TomlSize};
use super::{bounds, ConfigError};

/// One configured node.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NodeSpec {
    /// Unique, 1 to 64 bytes of `[A-Za-z0-9._-]`.
    pub id: String,
    /// An nng address this node listens on: `tcp://host:port` or `ipc:///path`.
    pub addr: String,
}

/// The shared secret of the cluster's links; its `Debug` hides it.
#[derive(Clone, PartialEq, Eq)]
pub struct ClusterSecret(pub Vec<u8>);

impl fmt::Debug for ClusterSecret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("ClusterSecret(..)")
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClusterConfig {
    /// This node's id; one of `nodes`.
    pub node_id: String,
    /// Every node, this one included, in the configured order.
    pub nodes: Vec<NodeSpec>,
    pub secret: ClusterSecret,
    /// A peer with no frame for this long is down.
    pub down_after: Duration,
    /// The nng address this node listens on when it is not its own entry in
    /// `nodes` (a proxy in front of it, say); `None`: that entry's.
    pub listen: Option<String>,
    /// Bytes queued for one peer past which it is marked lagging: the
    /// queue is dropped and both sides resync.
    pub queue_bytes: usize,
}

impl ClusterConfig {
    /// This node's index in `nodes`.
    pub fn me(&self) -> usize {
        self.nodes.iter().position(|n| n.id == self.node_id).unwrap_or(0)
    }

    /// The nng address this node's listener binds: `listen`, else its own
    /// address in `nodes`.
    pub fn listen_addr(&self) -> &str {
        match &self.listen {
            Some(listen) => listen,
            None => self.nodes.get(self.me()).map_or("", |n| n.addr.as_str()),
        }
    }

    /// The checks of [`Config::validate`](super::Config::validate) on the
    /// cluster: the node list, this node's place in it, the secret and the
    /// timing. The first problem is the one reported.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let nodes_key = "cluster.nodes";
        if self.nodes.is_empty() || self.nodes.len() > bounds::CLUSTER_NODES {
            return Err(ConfigError::setting(nodes_key, format!("must list 1 to {} nodes", bounds::CLUSTER_NODES)));
        }
        for (i, node) in self.nodes.iter().enumerate() {
            check_node_id(&node.id).map_err(|problem| ConfigError::setting(nodes_key, problem))?;
            check_addr(&node.addr)
                .map_err(|problem| ConfigError::setting(nodes_key, format!("node {:?}: {problem}", node.id)))?;
            // At most 64 nodes: the quadratic scan is nothing.
            if let Some(earlier) = self.nodes.get(..i).and_then(|before| before.iter().find(|n| n.id == node.id)) {
                return Err(ConfigError::setting(nodes_key, format!("node id {:?} is listed twice", earlier.id)));
            }
            if let Some(earlier) = self.nodes.get(..i).and_then(|before| before.iter().find(|n| n.addr == node.addr)) {
                let problem = format!("address {:?} is listed for both {:?} and {:?}", node.addr, earlier.id, node.id);
                return Err(ConfigError::setting(nodes_key, problem));
            }
        }
        if !self.nodes.iter().any(|n| n.id == self.node_id) {
            let ids: Vec<&str> = self.nodes.iter().map(|n| n.id.as_str()).collect();
            let problem = format!("{:?} is not one of the nodes ({})", self.node_id, ids.join(", "));
            return Err(ConfigError::setting("cluster.node-id", problem));
        }
        if self.secret.0.len() < bounds::MIN_CLUSTER_SECRET_BYTES {
            let problem = format!(
                "must be at least {} bytes (from {} or `secret` in [cluster])",
                bounds::MIN_CLUSTER_SECRET_BYTES,
                super::ENV_CLUSTER_SECRET
            );
            return Err(ConfigError::setting("cluster.secret", problem));
        }
        if self.down_after < bounds::MIN_CLUSTER_DOWN_AFTER || self.down_after > bounds::CLUSTER_DOWN_AFTER {
            let problem = format!(
                "must be from {} to {}",
                show_duration(bounds::MIN_CLUSTER_DOWN_AFTER),
                show_duration(bounds::CLUSTER_DOWN_AFTER)
            );
            return Err(ConfigError::setting("cluster-down-after", problem));
        }
        if let Some(listen) = &self.listen {
            check_addr(listen).map_err(|problem| ConfigError::setting("cluster-listen", problem))?;
        }
        Ok(())
    }
}

/// A node id: 1 to 64 bytes of `[A-Za-z0-9._-]`, so that it is safe in
/// file names, metric labels and log lines.
pub fn check_node_id(id: &str) -> Result<(), String> {
    let ok = !id.is_empty()
        && id.len() <= bounds::NODE_ID_BYTES
        && id.bytes().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'));
    if ok {
        Ok(())
    } else {
        Err(format!("node id {id:?} must be 1 to {} bytes of A-Z, a-z, 0-9, '.', '_' and '-'", bounds::NODE_ID_BYTES))
    }
}

/// An nng address a node listens on or dials: `tcp://` or `ipc://` and
/// something after it, at most 256 bytes, no control characters (nng takes
/// it as a C string).
fn check_addr(addr: &str) -> Result<(), String> {
    let rest = addr.strip_prefix("tcp://").or_else(|| addr.strip_prefix("ipc://"));
    match rest {
        None => Err(format!("address {addr:?} must start with tcp:// or ipc://")),
        Some("") => Err(format!("address {addr:?} names no host or path")),
        Some(_) if addr.len() > bounds::NODE_ADDR_BYTES => {
            Err(format!("address {addr:?} is longer than {} bytes", bounds::NODE_ADDR_BYTES))
        }
        Some(_) if addr.chars().any(char::is_control) => Err(format!("address {addr:?} has a control character")),
        Some(_) => Ok(()),
    }
}

/// The `[cluster]` table as the settings file has it. `node-id`,
/// `down-after` and `listen` move into the file layer's `cluster-node-id`,
/// `cluster-down-after` and `cluster-listen`, which flags and environment
/// variables override; `nodes` and `secret` stay here.
#[derive(Debug, Default)]
pub(crate) struct ClusterTable {
    pub node_id: Option<String>,
    pub nodes: Option<Vec<NodeSpec>>,
    pub secret: Option<ClusterSecret>,
    pub down_after: Option<Duration>,
    pub listen: Option<String>,
    pub queue_bytes: Option<usize>,
}

/// The keys of `[cluster]`, in kebab case; each may be spelled in snake
/// case too.
const TABLE_KEYS: &[&str] = &["node-id", "nodes", "secret", "down-after", "listen", "queue-bytes"];
/// The keys of one entry of `nodes`.
const NODE_KEYS: &[&str] = &["id", "addr"];

/// A key of `keys`, in either spelling, as its index; any other key fails
/// while it is read (so that toml can say which line it is on), naming it.
pub(super) struct KeyOf {
    pub keys: &'static [&'static str],
    pub table: &'static str,
}

impl<'de> DeserializeSeed<'de> for KeyOf {
    type Value = usize;

    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<usize, D::Error> {
        d.deserialize_identifier(self)
    }
}

impl Visitor<'_> for KeyOf {
    type Value = usize;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "a key of {}", self.table)
    }

    fn visit_str<E: de::Error>(self, key: &str) -> Result<usize, E> {
        let kebab = key.replace('_', "-");
        // `node-id` and `node_id`, but not `node_-id`: one spelling or the other.
        let spelled = !(key.contains('_') && key.contains('-'));
        match self.keys.iter().position(|k| *k == kebab).filter(|_| spelled) {
            Some(i) => Ok(i),
            None => Err(E::custom(format_args!(
                "unknown key `{}` in {}; the keys are {}",
                key.escape_debug(),
                self.table,
                self.keys.join(", ")
            ))),
        }
    }
}

/// The second value of one key, under either spelling: refused while it is
/// read, so that toml can say which line it is on.
struct Twice<'a> {
    key: &'a str,
    table: &'a str,
}

impl<'de> DeserializeSeed<'de> for Twice<'_> {
    type Value = ();

    fn deserialize<D: Deserializer<'de>>(self, _: D) -> Result<(), D::Error> {
        Err(de::Error::custom(format_args!("duplicate key `{}` in {}", self.key, self.table)))
    }
}

/// Reads the next value into `slot`, refusing a second one.
pub(super) fn take<'de, A: MapAccess<'de>, T: Deserialize<'de>>(
    map: &mut A,
    slot: &mut Option<T>,
    key: &str,
    table: &str,
) -> Result<(), A::Error> {
    if slot.is_some() {
        return map.next_value_seed(Twice { key, table });
    }
    *slot = Some(map.next_value()?);
    Ok(())
}

impl<'de> Deserialize<'de> for ClusterTable {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = ClusterTable;

            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("the [cluster] table")
            }

            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<ClusterTable, A::Error> {
                const TABLE: &str = "[cluster]";
                let mut t = ClusterTable::default();
                let mut secret: Option<String> = None;
                let mut down_after: Option<TomlDuration> = None;
                let mut queue_bytes: Option<TomlSize> = None;
                while let Some(i) = map.next_key_seed(KeyOf { keys: TABLE_KEYS, table: TABLE })? {
                    let key = TABLE_KEYS.get(i).copied().unwrap_or("");
                    match i {
                        0 => take(&mut map, &mut t.node_id, key, TABLE)?,
                        1 => {
                            let mut nodes: Option<Vec<NodeEntry>> = None;
                            take(&mut map, &mut nodes, key, TABLE)?;
                            t.nodes = nodes.map(|n| n.into_iter().map(|e| e.0).collect());
                        }
                        2 => take(&mut map, &mut secret, key, TABLE)?,
                        3 => take(&mut map, &mut down_after, key, TABLE)?,
                        4 => take(&mut map, &mut t.listen, key, TABLE)?,
                        _ => take(&mut map, &mut queue_bytes, key, TABLE)?,
                    }
                }
                t.secret = secret.map(|s| ClusterSecret(s.into_bytes()));
                t.down_after = down_after.map(|d| d.0);
                t.queue_bytes = queue_bytes.map(|q| q.0);
                Ok(t)
            }
        }
        d.deserialize_map(V)
    }
}

/// One entry of `nodes`: `{ id = "a", addr = "tcp://127.0.0.1:7101" }`.
struct NodeEntry(NodeSpec);

impl<'de> Deserialize<'de> for NodeEntry {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = NodeEntry;

            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a node, { id = \"a\", addr = \"tcp://127.0.0.1:7101\" }")
            }

            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<NodeEntry, A::Error> {
                const TABLE: &str = "a [cluster] node";
                let (mut id, mut addr) = (None, None);
                while let Some(i) = map.next_key_seed(KeyOf { keys: NODE_KEYS, table: TABLE })? {
                    match i {
                        0 => take(&mut map, &mut id, "id", TABLE)?,
                        _ => take(&mut map, &mut addr, "addr", TABLE)?,
                    }
                }
                match (id, addr) {
                    (Some(id), Some(addr)) => Ok(NodeEntry(NodeSpec { id, addr })),
                    (None, _) => Err(de::Error::custom("a [cluster] node needs an `id`")),
                    (Some(id), None) => Err(de::Error::custom(format_args!("[cluster] node {id:?} needs an `addr`"))),
                }
            }
        }
        d.deserialize_map(V)
    }
}

/// Where the pieces of a [`ClusterConfig`] came from, for
/// [`ClusterSources::build`].
#[derive(Debug, Default)]
pub(crate) struct ClusterSources {
    /// The `[cluster]` table of the settings file, without the keys that
    /// moved into the file layer.
    pub table: Option<ClusterTable>,
    /// `ROOMCAST_CLUSTER_SECRET`; overrides the table's.
    pub env_secret: Option<ClusterSecret>,
    /// The first cluster setting some layer set (its flag name), if any.
    pub given: Option<&'static str>,
}

impl ClusterSources {
    /// The cluster this node is part of, from the table and the resolved
    /// `cluster-*` settings; `None` for a single node. Only what is
    /// missing is refused here; [`ClusterConfig::validate`] checks the rest.
    pub fn build(
        self,
        node_id: Option<&String>,
        down_after: Duration,
        listen: Option<&String>,
        queue_bytes: usize,
    ) -> Result<Option<ClusterConfig>, ConfigError> {
        let Some(table) = self.table else {
            if let Some(key) = self.given {
                return Err(ConfigError::setting(key, "needs a [cluster] table with nodes in the settings file"));
            }
            if self.env_secret.is_some() {
                let problem = "needs a [cluster] table with nodes in the settings file";
                return Err(ConfigError::setting(super::ENV_CLUSTER_SECRET, problem));
            }
            return Ok(None);
        };
        let Some(nodes) = table.nodes else {
            return Err(ConfigError::setting(
                "cluster.nodes",
                "missing: [cluster] lists every node, this one included",
            ));
        };
        let Some(node_id) = node_id else {
            let problem = "missing: which of the nodes this one is (`node-id` in [cluster], or --cluster-node-id)";
            return Err(ConfigError::setting("cluster.node-id", problem));
        };
        let Some(secret) = self.env_secret.or(table.secret) else {
            let problem = format!("missing: set {} (or `secret` in [cluster])", super::ENV_CLUSTER_SECRET);
            return Err(ConfigError::setting("cluster.secret", problem));
        };
        Ok(Some(ClusterConfig {
            node_id: node_id.clone(),
            nodes,
            secret,
            down_after,
            listen: listen.cloned(),
            queue_bytes,
        }))
    }
}
