//! The `[cluster]` settings: which node this process is, the nodes of the
//! cluster and the secret their links prove they share.

use std::fmt;
use std::time::Duration;

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
    /// Where this node listens, when not at its `nodes` address.
    pub listen: Option<String>,
}

impl ClusterConfig {
    /// This node's index in `nodes`.
    pub fn me(&self) -> usize {
        self.nodes.iter().position(|n| n.id == self.node_id).unwrap_or(0)
    }
}
