# The frames cluster nodes send each other over their nng links: one nng
# message is one Frame, in the standard (unpacked) Cap'n Proto serialization
# with its segment table. The Rust side is src/cluster/wire.rs, which checks
# every value it decodes; the generated code is committed as
# src/cluster/cluster_capnp.rs so that a build needs no schema compiler.
#
# After editing this file, regenerate that module (needs the `capnp`
# compiler, Debian package `capnproto`):
#
#   ROOMCAST_BLESS=1 cargo test --release --lib cluster::wire::tests::the_generated_code_is_current
#
# Without ROOMCAST_BLESS the same test checks that the committed module is the
# one this schema gives.
#
# Conventions:
# - An optional number is a `hasX :Bool` plus `x`; `x` is 0 and means
#   nothing when `hasX` is false.
# - An optional text (a client message id) is a Text pointer: null means
#   none. A present one is never empty.
# - Fields are only ever added (with new ordinals); a change of meaning takes
#   a new `VERSION` in wire.rs, which the hello carries.

@0xf2b78e40909d1ef7;

struct Frame {
  items @0 :List(Item);
}

struct Item {
  union {
    hello @0 :Hello;
    heartbeat @1 :Heartbeat;
    forward @2 :Forward;
    answer @3 :Answer;
    deliver @4 :Deliver;
    # The owner dropped deliveries for the receiver: resync every room.
    lagged @5 :Void;
    # The receiver's members on the sender are about to be sent again ...
    syncStart @6 :Void;
    # ... or have all been.
    syncEnd @7 :Void;
  }
}

# The link-level hello; the sizes of the Data fields are exact.
struct Hello {
  version @0 :UInt16;
  node @1 :Text;
  incarnation @2 :UInt64;
  # SHA-256 over the configured node list: 32 bytes.
  nodesDigest @3 :Data;
  # 16 bytes.
  nonce @4 :Data;
  # 16 bytes (zeros when no nonce was received yet).
  echo @5 :Data;
  # HMAC-SHA-256: 32 bytes.
  mac @6 :Data;
}

struct Heartbeat {
  hearsYou @0 :Bool;
}

# How an answer is encoded where the asker lives.
enum WireKind {
  ws @0;
  http @1;
}

# A room command from a non-owner to the owner; `ticket` comes back in the
# answer.
struct Forward {
  union {
    join :group {
      ticket @0 :UInt32;
      room @1 :Text;
      user @2 :Text;
      member @3 :UInt64;
      hasSince @4 :Bool;
      since @5 :UInt64;
    }
    leave :group {
      room @6 :Text;
      user @7 :Text;
      member @8 :UInt64;
    }
    publish :group {
      ticket @9 :UInt32;
      kind @10 :WireKind;
      room @11 :Text;
      user @12 :Text;
      # The message body as JSON text.
      body @13 :Text;
      # The client's message id; null: none.
      id @14 :Text;
    }
    history :group {
      ticket @15 :UInt32;
      kind @16 :WireKind;
      room @17 :Text;
      hasBefore @18 :Bool;
      before @19 :UInt64;
      hasAfter @20 :Bool;
      after @21 :UInt64;
      # 1 to the protocol's largest page size.
      limit @22 :UInt32;
    }
    presence :group {
      ticket @23 :UInt32;
      kind @24 :WireKind;
      room @25 :Text;
    }
  }
}

# The owner's answer to a forwarded request.
struct Answer {
  ticket @0 :UInt32;
  reply @1 :Reply;
}

# One encoded `msg`: a WebSocket frame header, then the JSON from `jsonStart`.
struct MsgFrame {
  frame @0 :Data;
  jsonStart @1 :UInt32;
}

struct Member {
  user @0 :Text;
  # When the user joined, ms since the Unix epoch.
  since @1 :UInt64;
}

struct Reply {
  union {
    joined :group {
      room @0 :Text;
      last @1 :UInt64;
      hasRecovered @2 :Bool;
      recovered @3 :Bool;
      # Already encoded `msg` frames.
      replay @4 :List(Data);
    }
    ack :group {
      room @5 :Text;
      seq @6 :UInt64;
      ts @7 :UInt64;
      # null: none.
      id @8 :Text;
    }
    history :group {
      room @9 :Text;
      page @10 :List(MsgFrame);
      more @11 :Bool;
    }
    presence :group {
      room @12 :Text;
      members @13 :List(Member);
    }
    refused :group {
      # What was asked: 0 join, 1 publish, 2 history, 3 presence.
      to @14 :UInt8;
      room @15 :Text;
      # An HTTP status, 100 to 599.
      status @16 :UInt16;
      # One of the protocol's error codes; an unknown one reads as `internal`.
      code @17 :Text;
      message @18 :Text;
    }
  }
}

# A frame for every member of `room` on the receiving node, as the owner
# encoded it (WebSocket header and JSON): a `msg` (with its seq) or a
# `presence_diff` (no seq).
struct Deliver {
  room @0 :Text;
  hasSeq @1 :Bool;
  seq @2 :UInt64;
  frame @3 :Data;
}
