//! Which node owns a room: rendezvous (highest random weight) hashing over
//! the configured node ids, so every node computes the same owner, and
//! adding or removing a node moves only the rooms that node wins or held.

use crate::config::cluster::NodeSpec;

/// 64-bit FNV-1a over `node`, a separator and `room`, then a final mix
/// (FNV alone spreads similar names poorly across few nodes).
fn weight(node: &str, room: &str) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in node.as_bytes().iter().chain([0xffu8].iter()).chain(room.as_bytes()) {
        h ^= u64::from(*b);
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    // splitmix64's finaliser.
    h ^= h >> 30;
    h = h.wrapping_mul(0xbf58_476d_1ce4_e5b9);
    h ^= h >> 27;
    h = h.wrapping_mul(0x94d0_49bb_1331_11eb);
    h ^ (h >> 31)
}

/// The index in `nodes` of the node owning `room` (0 for an empty list).
pub fn owner_node(room: &str, nodes: &[NodeSpec]) -> usize {
    let mut best = (0u64, 0usize);
    for (i, n) in nodes.iter().enumerate() {
        let w = weight(&n.id, room);
        // Ties (astronomically rare) go to the lower index, everywhere alike.
        if i == 0 || w > best.0 {
            best = (w, i);
        }
    }
    best.1
}

#[cfg(test)]
mod tests {
    use super::*;

    fn nodes(ids: &[&str]) -> Vec<NodeSpec> {
        ids.iter().map(|i| NodeSpec { id: i.to_string(), addr: format!("ipc:///tmp/{i}") }).collect()
    }

    #[test]
    fn every_node_gets_a_share_and_removing_one_moves_only_its_rooms() {
        let three = nodes(&["a", "b", "c"]);
        let two = nodes(&["a", "c"]);
        let mut counts = [0usize; 3];
        for i in 0..3000 {
            let room = format!("room-{i}");
            let o = owner_node(&room, &three);
            counts[o] += 1;
            let o2 = owner_node(&room, &two);
            if o != 1 {
                // Not b's: stays where it was.
                assert_eq!(two[o2].id, three[o].id, "{room} moved");
            }
        }
        for c in counts {
            assert!((800..1200).contains(&c), "uneven spread {counts:?}");
        }
    }

    #[test]
    fn the_order_of_the_list_does_not_matter() {
        let abc = nodes(&["a", "b", "c"]);
        let cab = nodes(&["c", "a", "b"]);
        for i in 0..500 {
            let room = format!("r{i}");
            assert_eq!(abc[owner_node(&room, &abc)].id, cab[owner_node(&room, &cab)].id);
        }
    }
}
