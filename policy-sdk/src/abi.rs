//! The binary ABI between the policy host and a module: the I/O area in the module's linear
//! memory, the per-frame descriptor, the verdict, and the constants both sides share.
//!
//! Every structure here is `repr(C)` with explicit padding, so its layout on `wasm32` (where the
//! module reads it in place) and the byte encoding the host writes (`encode`/`decode`, built from
//! `offset_of!`) are one definition.

use core::mem::{offset_of, size_of};

/// ABI revision; the marker export is `policy_abi_v1`.
pub const ABI_VERSION: u32 = 1;
/// Name of the marker export that identifies a policy module.
pub const MARKER_EXPORT: &str = "policy_abi_v1";
/// Name of the custom section that holds the encoded [`crate::manifest::Manifest`].
pub const MANIFEST_SECTION: &str = "pol_manifest";
/// Module name of every host import.
pub const IMPORT_MODULE: &str = "pol";

/// Most frames the host hands a module in one call.
pub const MAX_BATCH: usize = 64;
/// Bytes of each frame copied into the module (headers); the rest is behind `frame_read`.
pub const SNAPSHOT_LEN: usize = 128;
/// Largest configuration blob a module receives in `pol_init`.
pub const CONFIG_MAX: usize = 32 * 1024;

/// Hook point: a frame has come in from a port (guest, uplink or gateway).
pub const HOOK_PORT_IN: u8 = 0;
/// Hook point: a frame is about to leave through the NAT egress.
pub const HOOK_NAT_EGRESS: u8 = 1;
/// Number of hook points.
pub const HOOK_COUNT: u8 = 2;

/// `FrameDesc::bridge_out`: the bridge floods the frame (broadcast, multicast, unknown unicast).
pub const OUT_FLOOD: u32 = u32::MAX;
/// `FrameDesc::bridge_out`: the frame is for the gateway (router) of its network.
pub const OUT_GATEWAY: u32 = u32::MAX - 1;
/// `FrameDesc::bridge_out`: the bridge has no output for the frame (yet).
pub const OUT_NONE: u32 = u32::MAX - 2;

/// `FrameDesc::flow_id` of a frame that belongs to no flow (ARP, other non-IP).
pub const NO_FLOW: u64 = 0;

/// Conntrack state bits (`FrameDesc::ct_state`).
pub mod ct {
    /// First packet of a flow.
    pub const NEW: u8 = 1 << 0;
    /// The flow has seen packets both ways.
    pub const ESTABLISHED: u8 = 1 << 1;
    /// The flow is related to another one (ICMP error for a known flow).
    pub const RELATED: u8 = 1 << 2;
    /// The packet travels in the reply direction of its flow.
    pub const REPLY: u8 = 1 << 3;
    /// Conntrack could not classify the packet.
    pub const INVALID: u8 = 1 << 4;
    /// The frame is not tracked (not IP).
    pub const UNTRACKED: u8 = 1 << 5;
}

/// Frame flags (`FrameDesc::flags`).
pub mod flag {
    /// The IP packet is a fragment (no L4 header, or not the first fragment).
    pub const FRAGMENT: u8 = 1 << 0;
    /// Destination MAC is broadcast.
    pub const BROADCAST: u8 = 1 << 1;
    /// Destination MAC is multicast (not broadcast).
    pub const MULTICAST: u8 = 1 << 2;
    /// The ingress port is a guest's port (not an uplink or the gateway).
    pub const FROM_GUEST: u8 = 1 << 3;
    /// The bridge delivers the frame to a guest's port.
    pub const TO_GUEST: u8 = 1 << 4;
}

/// One frame handed to a module: what the datapath knows about it. 40 bytes.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct FrameDesc {
    /// Conntrack flow id, or [`NO_FLOW`].
    pub flow_id: u64,
    /// Length of the whole frame in bytes.
    pub frame_len: u32,
    /// Network (tenant) the frame is in.
    pub network: u32,
    /// Port the frame came in on.
    pub ingress_port: u32,
    /// The bridge's own decision: an output port, [`OUT_FLOOD`], [`OUT_GATEWAY`] or [`OUT_NONE`].
    pub bridge_out: u32,
    /// Bytes of the frame present in this frame's snapshot slot.
    pub snap_len: u16,
    /// 802.1Q tag control information (0: untagged).
    pub vlan_tci: u16,
    /// Ethertype after any VLAN tags.
    pub ethertype: u16,
    /// IP protocol number (0 when not IP).
    pub ip_proto: u8,
    /// Conntrack state bits ([`ct`]).
    pub ct_state: u8,
    /// Offset of the L3 header in the frame.
    pub l3_off: u8,
    /// Offset of the L4 header in the frame (0 when absent).
    pub l4_off: u8,
    /// Hook point ([`HOOK_PORT_IN`], [`HOOK_NAT_EGRESS`]).
    pub hook: u8,
    /// Frame flags ([`flag`]).
    pub flags: u8,
    /// Reserved, zero.
    pub reserved: u32,
}

/// Verdict actions (`Verdict::action`).
pub mod action {
    /// No opinion: the next module in the chain decides.
    pub const CONTINUE: u8 = 0;
    /// Accept (ends this tier of the chain).
    pub const ACCEPT: u8 = 1;
    /// Drop silently.
    pub const DROP: u8 = 2;
    /// Drop and answer as iptables REJECT does (ICMP port unreachable, TCP RST).
    pub const REJECT: u8 = 3;
    /// Deliver to `Verdict::target` instead of the bridge's choice.
    pub const REDIRECT: u8 = 4;
    /// Highest valid action.
    pub const MAX: u8 = REDIRECT;
}

/// The name of an action, as listings print it.
pub fn action_name(a: u8) -> &'static str {
    match a {
        action::CONTINUE => "CONTINUE",
        action::ACCEPT => "ACCEPT",
        action::DROP => "DROP",
        action::REJECT => "REJECT",
        action::REDIRECT => "REDIRECT",
        _ => "INVALID",
    }
}

/// Verdict flags (`Verdict::flags`).
pub mod vflag {
    /// Also deliver a copy to `Verdict::mirror`.
    pub const MIRROR: u8 = 1 << 0;
    /// Log the frame (rate-limited by the host).
    pub const LOG: u8 = 1 << 1;
    /// Do not cache this verdict in the flow: judge every packet of it (`pol_on_frames`).
    pub const NO_CACHE: u8 = 1 << 2;
    /// All defined flags.
    pub const ALL: u8 = MIRROR | LOG | NO_CACHE;
}

/// A module's decision on one frame. 16 bytes.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Verdict {
    /// One of [`action`].
    pub action: u8,
    /// Bits of [`vflag`].
    pub flags: u8,
    /// Rate-limit class defined by this module (`rate_class`), 0 for none.
    pub rate_class: u16,
    /// Redirect target port.
    pub target: u32,
    /// Mirror target port (with [`vflag::MIRROR`]).
    pub mirror: u32,
    /// Rule that decided (described with `rule_describe`), counted per rule by the host; 0 for none.
    pub rule: u32,
}

impl Verdict {
    /// No opinion.
    pub const CONTINUE: Verdict = Verdict::action(action::CONTINUE);
    /// Accept.
    pub const ACCEPT: Verdict = Verdict::action(action::ACCEPT);
    /// Drop.
    pub const DROP: Verdict = Verdict::action(action::DROP);
    /// Reject.
    pub const REJECT: Verdict = Verdict::action(action::REJECT);

    const fn action(action: u8) -> Verdict {
        Verdict {
            action,
            flags: 0,
            rate_class: 0,
            target: 0,
            mirror: 0,
            rule: 0,
        }
    }

    /// Redirect to `port`.
    pub const fn redirect(port: u32) -> Verdict {
        Verdict {
            target: port,
            ..Verdict::action(action::REDIRECT)
        }
    }

    /// The same verdict, attributed to rule `rule`.
    pub const fn by_rule(self, rule: u32) -> Verdict {
        Verdict { rule, ..self }
    }

    /// The same verdict with flags `flags` added.
    pub const fn with_flags(self, flags: u8) -> Verdict {
        Verdict {
            flags: self.flags | flags,
            ..self
        }
    }

    /// The same verdict under rate-limit class `class`.
    pub const fn with_rate_class(self, class: u16) -> Verdict {
        Verdict {
            rate_class: class,
            ..self
        }
    }

    /// The same verdict, also mirrored to `port`.
    pub const fn with_mirror(self, port: u32) -> Verdict {
        Verdict {
            mirror: port,
            flags: self.flags | vflag::MIRROR,
            ..self
        }
    }
}

/// Header of the I/O area.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct IoHeader {
    /// [`ABI_VERSION`], written by the module.
    pub abi_version: u32,
    /// Frames in the current call (also passed as the call's argument).
    pub count: u32,
    /// The host's time for this call, nanoseconds (monotonic).
    pub now_ns: u64,
}

/// The shared I/O area in the module's memory; `pol_io()` returns its address.
#[repr(C, align(16))]
#[derive(Debug)]
pub struct IoArea {
    /// Call header.
    pub header: IoHeader,
    /// Frame descriptors, `header.count` valid.
    pub desc: [FrameDesc; MAX_BATCH],
    /// Header snapshots: slot `i` holds the first `desc[i].snap_len` bytes of frame `i`.
    pub snap: [[u8; SNAPSHOT_LEN]; MAX_BATCH],
    /// Verdicts, written by the module, one per descriptor.
    pub verdict: [Verdict; MAX_BATCH],
    /// Configuration bytes for `pol_init(len)`.
    pub config: [u8; CONFIG_MAX],
}

impl IoArea {
    /// An all-zero area (so it lives in `.bss`, not in the module file).
    pub const ZERO: IoArea = IoArea {
        header: IoHeader {
            abi_version: 0,
            count: 0,
            now_ns: 0,
        },
        desc: [FrameDesc::ZERO; MAX_BATCH],
        snap: [[0; SNAPSHOT_LEN]; MAX_BATCH],
        verdict: [Verdict::CONTINUE; MAX_BATCH],
        config: [0; CONFIG_MAX],
    };
}

/// Byte offsets of the I/O area's parts, for the host.
pub mod io_off {
    use super::*;
    /// Offset of `header.count`.
    pub const COUNT: usize = offset_of!(IoArea, header) + offset_of!(IoHeader, count);
    /// Offset of `header.now_ns`.
    pub const NOW_NS: usize = offset_of!(IoArea, header) + offset_of!(IoHeader, now_ns);
    /// Offset of `desc[0]`.
    pub const DESC: usize = offset_of!(IoArea, desc);
    /// Offset of `snap[0]`.
    pub const SNAP: usize = offset_of!(IoArea, snap);
    /// Offset of `verdict[0]`.
    pub const VERDICT: usize = offset_of!(IoArea, verdict);
    /// Offset of `config`.
    pub const CONFIG: usize = offset_of!(IoArea, config);
    /// Size of the whole area.
    pub const SIZE: usize = size_of::<IoArea>();
}

/// Size of an encoded [`FrameDesc`].
pub const DESC_SIZE: usize = size_of::<FrameDesc>();
/// Size of an encoded [`Verdict`].
pub const VERDICT_SIZE: usize = size_of::<Verdict>();

const _: () = assert!(DESC_SIZE == 40);
const _: () = assert!(VERDICT_SIZE == 16);
const _: () = assert!(io_off::DESC.is_multiple_of(8) && io_off::VERDICT.is_multiple_of(4));

macro_rules! put {
    ($buf:ident, $ty:ty, $field:ident, $value:expr) => {{
        let bytes = $value.to_le_bytes();
        let at = offset_of!($ty, $field);
        $buf[at..at + bytes.len()].copy_from_slice(&bytes);
    }};
}

macro_rules! get {
    ($buf:ident, $ty:ty, $field:ident, $int:ty) => {{
        let at = offset_of!($ty, $field);
        let mut bytes = [0u8; size_of::<$int>()];
        bytes.copy_from_slice(&$buf[at..at + size_of::<$int>()]);
        <$int>::from_le_bytes(bytes)
    }};
}

impl FrameDesc {
    /// An all-zero descriptor.
    pub const ZERO: FrameDesc = FrameDesc {
        flow_id: 0,
        frame_len: 0,
        network: 0,
        ingress_port: 0,
        bridge_out: 0,
        snap_len: 0,
        vlan_tci: 0,
        ethertype: 0,
        ip_proto: 0,
        ct_state: 0,
        l3_off: 0,
        l4_off: 0,
        hook: 0,
        flags: 0,
        reserved: 0,
    };

    /// The little-endian `repr(C)` bytes of this descriptor, as the module reads it.
    pub fn encode(&self) -> [u8; DESC_SIZE] {
        let mut b = [0u8; DESC_SIZE];
        put!(b, FrameDesc, flow_id, self.flow_id);
        put!(b, FrameDesc, frame_len, self.frame_len);
        put!(b, FrameDesc, network, self.network);
        put!(b, FrameDesc, ingress_port, self.ingress_port);
        put!(b, FrameDesc, bridge_out, self.bridge_out);
        put!(b, FrameDesc, snap_len, self.snap_len);
        put!(b, FrameDesc, vlan_tci, self.vlan_tci);
        put!(b, FrameDesc, ethertype, self.ethertype);
        put!(b, FrameDesc, ip_proto, self.ip_proto);
        put!(b, FrameDesc, ct_state, self.ct_state);
        put!(b, FrameDesc, l3_off, self.l3_off);
        put!(b, FrameDesc, l4_off, self.l4_off);
        put!(b, FrameDesc, hook, self.hook);
        put!(b, FrameDesc, flags, self.flags);
        b
    }
}

impl Verdict {
    /// Reads a verdict from its little-endian `repr(C)` bytes.
    pub fn decode(b: &[u8; VERDICT_SIZE]) -> Verdict {
        Verdict {
            action: get!(b, Verdict, action, u8),
            flags: get!(b, Verdict, flags, u8),
            rate_class: get!(b, Verdict, rate_class, u16),
            target: get!(b, Verdict, target, u32),
            mirror: get!(b, Verdict, mirror, u32),
            rule: get!(b, Verdict, rule, u32),
        }
    }

    /// The little-endian `repr(C)` bytes of this verdict.
    pub fn encode(&self) -> [u8; VERDICT_SIZE] {
        let mut b = [0u8; VERDICT_SIZE];
        put!(b, Verdict, action, self.action);
        put!(b, Verdict, flags, self.flags);
        put!(b, Verdict, rate_class, self.rate_class);
        put!(b, Verdict, target, self.target);
        put!(b, Verdict, mirror, self.mirror);
        put!(b, Verdict, rule, self.rule);
        b
    }

    /// Whether the action and flags are ones this ABI defines.
    pub fn is_valid(&self) -> bool {
        self.action <= action::MAX && self.flags & !vflag::ALL == 0
    }
}

/// Status codes of host imports: `>= 0` is success.
pub mod status {
    /// Success.
    pub const OK: i32 = 0;
    /// A bad argument (unknown id, wrong length).
    pub const INVALID: i32 = -1;
    /// The key is not in the map.
    pub const NOT_FOUND: i32 = -2;
    /// The map is full.
    pub const FULL: i32 = -3;
    /// The module lacks the capability, or the call is not allowed now.
    pub const DENIED: i32 = -4;
    /// A pointer or length is outside the module's memory or the frame.
    pub const BOUNDS: i32 = -5;
}

/// Capability bits a manifest may request.
pub mod cap {
    /// `frame_read`: bytes past the snapshot.
    pub const FRAME_READ: u32 = 1 << 0;
}

/// Log levels for the `log` import.
pub mod level {
    /// Error.
    pub const ERROR: i32 = 1;
    /// Warning.
    pub const WARN: i32 = 2;
    /// Information.
    pub const INFO: i32 = 3;
    /// Debugging.
    pub const DEBUG: i32 = 4;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn descriptor_encoding_matches_layout() {
        let d = FrameDesc {
            flow_id: 0x0102_0304_0506_0708,
            frame_len: 60,
            network: 7,
            ingress_port: 3,
            bridge_out: OUT_FLOOD,
            snap_len: 60,
            vlan_tci: 0x0123,
            ethertype: 0x0800,
            ip_proto: 6,
            ct_state: ct::NEW,
            l3_off: 14,
            l4_off: 34,
            hook: HOOK_NAT_EGRESS,
            flags: flag::FROM_GUEST,
            reserved: 0,
        };
        let b = d.encode();
        assert_eq!(&b[0..8], &0x0102_0304_0506_0708u64.to_le_bytes());
        assert_eq!(&b[8..12], &60u32.to_le_bytes());
        assert_eq!(&b[20..24], &u32::MAX.to_le_bytes());
        assert_eq!(&b[28..30], &0x0800u16.to_le_bytes());
        assert_eq!(b[30], 6);
        assert_eq!(b[35], flag::FROM_GUEST);
    }

    #[test]
    fn verdict_round_trips() {
        let v = Verdict::redirect(9)
            .by_rule(4)
            .with_mirror(2)
            .with_rate_class(3);
        assert_eq!(Verdict::decode(&v.encode()), v);
        assert!(v.is_valid());
        assert!(!Verdict { action: 9, ..v }.is_valid());
        assert!(!Verdict { flags: 0x80, ..v }.is_valid());
    }
}
