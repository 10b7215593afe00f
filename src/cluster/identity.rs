//! Which node a data directory belongs to, checked once at startup.
//!
//! The directory remembers the node id it was first started as, in
//! `<data>/node-id`. Starting another node on it, or starting it under a
//! node list that gives some of its rooms to other nodes, would have two
//! nodes answer for one room (its seqs restarting elsewhere, its history
//! split), so both refuse to start: there is no automatic handover.

use std::fs;
use std::io::{Read, Write};
use std::path::Path;

use crate::cluster::ring::owner_node;
use crate::config::cluster::{check_node_id, ClusterConfig};

/// The file in the data directory holding its node id and a newline.
pub const NODE_ID_FILE: &str = "node-id";

/// Largest `node-id` file read: an id of 64 bytes and a newline, with room.
const MAX_NODE_ID_FILE: u64 = 256;

/// Refuses to start `config`'s node on `data_dir` when the directory
/// belongs to another node, or when it holds rooms (`rooms`: every room
/// name in its store) that another node owns under `config.nodes`. On the
/// first start (no `node-id` file yet) the id is written once everything
/// else passed. The error is one line, for `roomcast: <it>`.
pub fn check(config: &ClusterConfig, data_dir: &Path, rooms: impl Iterator<Item = String>) -> Result<(), String> {
    let me = config.node_id.as_str();
    let shown = data_dir.display();
    let path = data_dir.join(NODE_ID_FILE);
    let remembered = read_node_id(&path)?;
    if let Some(other) = &remembered {
        if other != me {
            return Err(format!("data directory {shown} belongs to node {other}, not {me}"));
        }
    }
    let mine = config.me();
    let mut foreign = 0u64;
    let mut example: Option<(String, usize)> = None;
    for room in rooms {
        let owner = owner_node(&room, &config.nodes);
        if owner != mine {
            foreign += 1;
            if example.is_none() {
                example = Some((room, owner));
            }
        }
    }
    if let Some((room, owner)) = example {
        let owner = config.nodes.get(owner).map_or("?", |n| n.id.as_str());
        let rooms = if foreign == 1 { "room" } else { "rooms" };
        return Err(format!(
            "data directory {shown} holds {foreign} {rooms} that node {me} does not own under the configured \
             nodes, such as {room:?} (owned by node {owner}); start it with the node list it was written under"
        ));
    }
    if remembered.is_none() {
        write_node_id(data_dir, &path, me)?;
    }
    Ok(())
}

/// The id in `path`, `None` when there is no such file. Anything but one
/// valid node id and a newline is refused: the file is ours alone.
fn read_node_id(path: &Path) -> Result<Option<String>, String> {
    let shown = path.display();
    let file = match fs::File::open(path) {
        Ok(file) => file,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(format!("cannot read {shown}: {e}")),
    };
    let mut bytes = Vec::new();
    file.take(MAX_NODE_ID_FILE + 1).read_to_end(&mut bytes).map_err(|e| format!("cannot read {shown}: {e}"))?;
    let malformed = || format!("{shown} is malformed: expected one node id and a newline");
    if bytes.len() as u64 > MAX_NODE_ID_FILE {
        return Err(malformed());
    }
    let text = String::from_utf8(bytes).map_err(|_| malformed())?;
    let id = text.strip_suffix('\n').ok_or_else(malformed)?;
    check_node_id(id).map_err(|_| malformed())?;
    Ok(Some(id.to_string()))
}

/// Writes `<id>\n` to `path` atomically: a private (0600) temporary file
/// beside it, synced, renamed into place, and the directory synced, so a
/// crash leaves either no file or the whole one.
fn write_node_id(data_dir: &Path, path: &Path, id: &str) -> Result<(), String> {
    let shown = path.display();
    fs::create_dir_all(data_dir).map_err(|e| format!("cannot create {}: {e}", data_dir.display()))?;
    let mut nonce = [0u8; 8];
    getrandom::fill(&mut nonce).map_err(|e| format!("cannot write {shown}: no randomness: {e}"))?;
    let tmp = data_dir.join(format!("{NODE_ID_FILE}.{:016x}.tmp", u64::from_le_bytes(nonce)));
    let written = write_new(&tmp, id).and_then(|()| fs::rename(&tmp, path));
    if let Err(e) = written {
        let _ = fs::remove_file(&tmp);
        return Err(format!("cannot write {shown}: {e}"));
    }
    fs::File::open(data_dir).and_then(|d| d.sync_all()).map_err(|e| format!("cannot sync {}: {e}", data_dir.display()))
}

fn write_new(tmp: &Path, id: &str) -> std::io::Result<()> {
    let mut options = fs::OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        options.mode(0o600);
    }
    let mut file = options.open(tmp)?;
    file.write_all(format!("{id}\n").as_bytes())?;
    file.sync_all()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::cluster::{ClusterSecret, NodeSpec};
    use std::time::Duration;

    fn config(me: &str, ids: &[&str]) -> ClusterConfig {
        ClusterConfig {
            node_id: me.to_string(),
            nodes: ids.iter().map(|i| NodeSpec { id: i.to_string(), addr: format!("ipc:///tmp/rc-{i}") }).collect(),
            secret: ClusterSecret(vec![7; 32]),
            down_after: Duration::from_secs(5),
            listen: None,
            queue_bytes: 16 << 20,
        }
    }

    fn no_rooms() -> std::iter::Empty<String> {
        std::iter::empty()
    }

    /// Rooms `cfg`'s node owns, and rooms it does not.
    fn rooms_split(cfg: &ClusterConfig, n: usize) -> (Vec<String>, Vec<String>) {
        (0..n).map(|i| format!("room-{i}")).partition(|r| owner_node(r, &cfg.nodes) == cfg.me())
    }

    #[test]
    fn first_start_writes_the_id_privately_and_the_same_id_starts_again() {
        let dir = tempfile::tempdir().unwrap();
        let cfg = config("b", &["a", "b", "c"]);
        check(&cfg, dir.path(), no_rooms()).unwrap();
        let path = dir.path().join(NODE_ID_FILE);
        assert_eq!(fs::read_to_string(&path).unwrap(), "b\n");
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            assert_eq!(fs::metadata(&path).unwrap().permissions().mode() & 0o777, 0o600);
        }
        // No temporary file left behind.
        let names: Vec<_> = fs::read_dir(dir.path()).unwrap().map(|e| e.unwrap().file_name()).collect();
        assert_eq!(names, [NODE_ID_FILE]);
        let (owned, _) = rooms_split(&cfg, 50);
        assert!(!owned.is_empty());
        check(&cfg, dir.path(), owned.into_iter()).unwrap();
        assert_eq!(fs::read_to_string(&path).unwrap(), "b\n");
    }

    #[test]
    fn another_id_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        check(&config("b", &["a", "b"]), dir.path(), no_rooms()).unwrap();
        let err = check(&config("a", &["a", "b"]), dir.path(), no_rooms()).unwrap_err();
        assert_eq!(err, format!("data directory {} belongs to node b, not a", dir.path().display()));
        assert_eq!(fs::read_to_string(dir.path().join(NODE_ID_FILE)).unwrap(), "b\n", "left as it was");
    }

    #[test]
    fn rooms_another_node_owns_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let cfg = config("a", &["a", "b", "c"]);
        let (owned, foreign) = rooms_split(&cfg, 60);
        assert!(foreign.len() > 1);
        let mut rooms = owned.clone();
        rooms.extend(foreign.iter().cloned());
        let err = check(&cfg, dir.path(), rooms.into_iter()).unwrap_err();
        let example = &foreign[0];
        let owner = &cfg.nodes[owner_node(example, &cfg.nodes)].id;
        assert!(err.contains(&format!("holds {} rooms", foreign.len())), "{err}");
        assert!(err.contains(&format!("{example:?} (owned by node {owner})")), "{err}");
        assert!(!err.contains('\n'));
        // Refused before the directory was claimed.
        assert!(!dir.path().join(NODE_ID_FILE).exists());
        // Under the node list it was written under, the same rooms are fine.
        check(&config("a", &["a"]), dir.path(), owned.into_iter().chain(foreign)).unwrap();
    }

    #[test]
    fn a_room_name_is_quoted_on_one_line() {
        let dir = tempfile::tempdir().unwrap();
        let cfg = config("a", &["a", "b"]);
        let room = (0..100).map(|i| format!("x\n{i}")).find(|r| owner_node(r, &cfg.nodes) != cfg.me()).unwrap();
        let err = check(&cfg, dir.path(), std::iter::once(room)).unwrap_err();
        assert!(err.contains("holds 1 room that"), "{err}");
        assert!(!err.contains('\n'), "{err}");
    }

    #[test]
    fn a_single_node_owns_everything() {
        let dir = tempfile::tempdir().unwrap();
        let cfg = config("solo", &["solo"]);
        check(&cfg, dir.path(), (0..100).map(|i| format!("r{i}"))).unwrap();
        assert_eq!(fs::read_to_string(dir.path().join(NODE_ID_FILE)).unwrap(), "solo\n");
    }

    #[test]
    fn a_malformed_file_is_refused() {
        let cfg = config("a", &["a", "b"]);
        let huge = "a".repeat(1000);
        for bad in ["", "a", "\n", "a\n\n", "a b\n", "a\nb\n", "\u{e9}\n", huge.as_str()] {
            let dir = tempfile::tempdir().unwrap();
            let path = dir.path().join(NODE_ID_FILE);
            fs::write(&path, bad).unwrap();
            let err = check(&cfg, dir.path(), no_rooms()).unwrap_err();
            assert!(err.contains("is malformed"), "{bad:?}: {err}");
            assert_eq!(fs::read(&path).unwrap(), bad.as_bytes(), "{bad:?}: left as it was");
        }
        let dir = tempfile::tempdir().unwrap();
        fs::write(dir.path().join(NODE_ID_FILE), b"\xff\n").unwrap();
        assert!(check(&cfg, dir.path(), no_rooms()).unwrap_err().contains("is malformed"));
        // A directory where the file should be cannot be read.
        let dir = tempfile::tempdir().unwrap();
        fs::create_dir(dir.path().join(NODE_ID_FILE)).unwrap();
        assert!(check(&cfg, dir.path(), no_rooms()).is_err());
    }
}
