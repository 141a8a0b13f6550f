//! A thread's exact-match cache of recent packets of known flows, in front of a shared
//! [`Conntrack`] (as Open vSwitch's exact-match cache sits in front of its classifier).
//!
//! Tracking a packet of a known flow takes the flow's shard lock and writes its shared entry.
//! Most packets of an established flow change nothing there but the flow's timeout, so a thread
//! remembers, per packet shape (network, protocol, addresses and ports with their direction,
//! and the kind: TCP without SYN/FIN/RST, UDP, ICMP echo request or reply), the verdict that
//! tracking such a packet last returned, and answers the next one from it without the lock.
//!
//! What it remembers stays right:
//! - only packets that leave their flow as it was are remembered: valid ones, of UDP or ICMP
//!   echo flows or of TCP flows that are ESTABLISHED after the packet, without SYN, FIN or
//!   RST; packets with those flags, ICMP errors and untracked packets always go to conntrack;
//! - every change to a flow that such packets would not see (it is removed, a TCP flow leaves
//!   ESTABLISHED, its verdict changes or is cleared) moves the table's
//!   [`epoch`](Conntrack::epoch); the cache reads it once per batch and answers only from
//!   entries of that epoch;
//! - an entry answers for [`FlowCache::refresh`] after the packet it was made from was tracked
//!   (an eighth of the table's shortest timeout, at most 1 s); the next packet like it is
//!   tracked again, which refreshes the flow's timeout (and recreates a flow that is gone, to
//!   be judged again).
//!
//! So the cache may lag the table by one batch for changes made by other threads during that
//! batch, and a flow's timeout runs from up to [`FlowCache::refresh`] before its last packet.
//! Conntrack counts nothing per packet of a known flow, so there is nothing else to credit.
//!
//! The table is allocated on the first entry, so a thread whose stage never sees a known flow costs
//! nothing but this struct. It starts at [`ENTRIES`] and doubles, up to [`MAX_ENTRIES`], while more
//! live flows pass than it holds (a pool worker serving 16 ports of 256 flows each sent most of its
//! packets to conntrack while the size was fixed). A guest can make its own packets collide in the
//! cache; that costs it the lookup in conntrack the cache would have saved, nothing more. A set
//! keeps its live entries: a packet whose set holds two other live ones is tracked but not
//! remembered (until one of them is outdated), so more keys than a set holds do not evict each
//! other in turn and all miss.
//!
//! A slot holds its key and the index of its verdict in a small table of the distinct verdicts
//! (a port's flows share a few), so a hit reads one cache line of slots and a verdict that the
//! port's other flows keep in cache. The table also counts the packets and bytes answered with
//! each verdict ([`FlowCache::hit`]), until its owner takes them ([`FlowCache::take_hits`]).

use std::net::{IpAddr, Ipv4Addr};

use smoltcp::time::{Duration, Instant};

use crate::conntrack::{
    Conntrack, CtState, Ipv4Fields, PacketKind, PacketMeta, TcpFlags, TcpState, Tracked, Transport,
};

/// Entries of a cache when it is made: sets of two, picked by a hash of the packet's key.
pub const ENTRIES: usize = 1024;

/// Most entries a cache grows to (512 KiB of slots).
pub const MAX_ENTRIES: usize = 16384;

/// Lookups per set over which the share of packets that found no slot is taken.
const WINDOW_PER_SET: u64 = 32;

/// A cache doubles when more than one lookup in this many over a window ended in a packet that
/// found its set full: each costs a lookup in conntrack, several times a hit. (At one in 16, a
/// worker of 16 ports of 256 flows each stayed at 8192 entries with 3% of its packets refused;
/// it now grows to 16384, where the flows' sets hold them all.)
const GROW_REFUSED: u64 = 64;

/// The longest time an entry answers for.
const MAX_REFRESH: Duration = Duration::from_secs(1);

/// What makes two packets alike for the cache: the fields conntrack reads of them, packed in
/// two words that a slot compares in two, and the packet's kind.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Key {
    /// The source address in the low half of the first word, the destination in its high
    /// half (each as its bytes lie in memory); the network in the low half of the second, the
    /// destination port above it and the source port in its top 16 bits.
    words: [u64; 2],
    /// The protocol and kind: [`TCP_ACK`], [`UDP`], [`ECHO_REQUEST`] or [`ECHO_REPLY`].
    kind: u8,
}

/// Kinds of [`Key`] (0 is an empty [`Slot`]'s).
const TCP_ACK: u8 = 1;
const UDP: u8 = 2;
const ECHO_REQUEST: u8 = 3;
const ECHO_REPLY: u8 = 4;

impl Key {
    /// The key of a packet the cache may answer for: IPv4 TCP without SYN, FIN or RST (and
    /// with ACK), UDP, or an ICMP echo; `None` for any other.
    fn of(packet: &PacketMeta) -> Option<Key> {
        let kind = match packet.kind {
            PacketKind::Tcp(f) => Self::tcp_kind(f)?,
            PacketKind::Udp => UDP,
            PacketKind::IcmpEcho { request } => Self::echo_kind(request),
            PacketKind::IcmpError { .. } => return None,
        };
        let t = &packet.tuple;
        let (IpAddr::V4(src), IpAddr::V4(dst)) = (t.src.addr, t.dst.addr) else {
            return None;
        };
        Some(Key::new(t.zone, src, dst, t.src.port, t.dst.port, kind))
    }

    /// The key of the packet of `fields`, as [`Key::of`] its [`PacketMeta`].
    #[inline]
    fn of_fields(fields: &Ipv4Fields<'_>) -> Option<Key> {
        let (sport, dport, kind) = match fields.transport {
            Transport::Tcp {
                src_port,
                dst_port,
                flags,
            } => (src_port, dst_port, Self::tcp_kind(TcpFlags::of(flags))?),
            Transport::Udp { src_port, dst_port } => (src_port, dst_port, UDP),
            Transport::IcmpEcho { ident, request } => (ident, ident, Self::echo_kind(request)),
            Transport::IcmpError { .. } => return None,
        };
        Some(Key::new(
            fields.zone,
            fields.src,
            fields.dst,
            sport,
            dport,
            kind,
        ))
    }

    #[inline]
    fn new(zone: u32, src: Ipv4Addr, dst: Ipv4Addr, sport: u16, dport: u16, kind: u8) -> Key {
        let addr = |a: Ipv4Addr| u64::from(u32::from_ne_bytes(a.octets()));
        let ports = u64::from(sport) << 16 | u64::from(dport);
        Key {
            words: [addr(src) | addr(dst) << 32, u64::from(zone) | ports << 32],
            kind,
        }
    }

    /// The kind of TCP segments the cache may answer for: ACK without SYN, FIN or RST.
    fn tcp_kind(f: TcpFlags) -> Option<u8> {
        (f.ack && !f.syn && !f.fin && !f.rst).then_some(TCP_ACK)
    }

    fn echo_kind(request: bool) -> u8 {
        if request {
            ECHO_REQUEST
        } else {
            ECHO_REPLY
        }
    }

    /// The index of the key's set among `sets` (a power of two): a multiply of its words, top
    /// bits (the high word of its product with `sets`), so the keys of a set go to one of two
    /// sets when their number doubles. The addresses are taken as numbers, so the bytes that
    /// vary most between flows (their last) are low in the product's input, and ports of
    /// neighbouring numbers go to sets apart. The kind is left out: packets alike but for it
    /// (TCP and UDP of the same ports) are rare.
    #[inline]
    fn set(&self, sets: usize) -> usize {
        let addrs = u64::from_be(self.words[0]);
        let h = (addrs ^ self.words[1].rotate_left(17)).wrapping_mul(0x9e37_79b9_7f4a_7c15);
        ((u128::from(h) * sets as u128) >> 64) as usize
    }
}

/// One remembered packet shape and the index of its verdict in the cache's table of distinct
/// verdicts: a set of two fills one cache line, and a hit reads no other line of its own.
#[derive(Clone, Copy, Debug)]
struct Slot {
    /// Its key's words.
    words: [u64; 2],
    /// Its key's kind in the low byte (0 for no key), and above it the cache's
    /// [`stamp`](FlowCache::stamp) when it was made: a hit compares both at once.
    tag: u32,
    /// Its verdict: an index into [`FlowCache::verdicts`], valid while the stamp is current.
    verdict: u16,
    /// Until when it answers: when a packet like it was tracked, plus the refresh interval.
    until: Instant,
}

/// A slot's [`tag`](Slot::tag).
#[inline]
fn tag(kind: u8, stamp: u16) -> u32 {
    u32::from(kind) | u32::from(stamp) << 8
}

impl Slot {
    const EMPTY: Slot = Slot {
        words: [0; 2],
        tag: 0,
        verdict: 0,
        until: Instant::ZERO,
    };

    /// The key it holds (of kind 0 if none).
    fn key(&self) -> Key {
        Key {
            words: self.words,
            kind: self.tag as u8,
        }
    }

    /// Whether it holds a key.
    fn is_empty(&self) -> bool {
        self.tag as u8 == 0
    }

    /// Whether it holds `key` and answers for it at `now` under `stamp`.
    #[inline]
    fn answers_for(&self, key: &Key, now: Instant, stamp: u16) -> bool {
        self.words == key.words && self.tag == tag(key.kind, stamp) && now < self.until
    }

    /// Whether it holds a key and answers at `now` under `stamp`.
    fn answers(&self, now: Instant, stamp: u16) -> bool {
        !self.is_empty() && self.answers_for(&self.key(), now, stamp)
    }
}

/// The two slots a key may be in, on a cache line of their own.
#[derive(Clone, Copy, Debug)]
#[repr(align(64))]
struct Set([Slot; 2]);

const _: () = assert!(std::mem::size_of::<Set>() == 64);

/// Most distinct verdicts the slots of one stamp refer to; one more clears the cache (a new
/// stamp). Verdicts differ by action, rules, rate class, mirror and generation, so a port's
/// flows share a few of them (one per rule they match, with a security group).
pub const MAX_VERDICTS: usize = 256;

const _: () = assert!(MAX_VERDICTS <= 1 << 16);

/// A verdict the slots refer to, and the packets the cache answered with it
/// ([`FlowCache::hit`]) since they were last taken ([`FlowCache::take_hits`]).
#[derive(Clone, Copy, Debug)]
struct Answer<V> {
    verdict: V,
    packets: u64,
    bytes: u64,
}

/// One thread's cache in front of one [`Conntrack`]. See the module docs.
#[derive(Debug)]
pub struct FlowCache<V> {
    /// [`ENTRIES`] / 2 sets once the first entry is made (more once grown), empty before.
    sets: Box<[Set]>,
    /// Lookups since the window began.
    lookups: u64,
    /// Packets since the window began that were tracked but found no slot.
    refused: u64,
    /// The distinct verdicts the slots of the current stamp refer to (at most
    /// [`MAX_VERDICTS`]), with their hits; emptied with each new stamp.
    verdicts: Vec<Answer<V>>,
    /// The hits of verdicts a new stamp forgot, not yet taken.
    forgotten: Vec<Answer<V>>,
    refresh: Duration,
    /// The table's epoch at the start of the batch.
    epoch: u64,
    /// Moves (wrapping) with `epoch` and when `verdicts` is full: slots made under another
    /// stamp do not answer. When it wraps to 0 every slot is emptied, so no slot of an older
    /// stamp ever answers.
    stamp: u16,
}

impl<V: Copy + PartialEq> FlowCache<V> {
    /// An empty cache in front of `flows` (nothing allocated yet).
    pub fn new(flows: &Conntrack<V>) -> Self {
        let refresh = (flows.timeouts().shortest() / 8).min(MAX_REFRESH);
        FlowCache {
            sets: Box::default(),
            lookups: 0,
            refused: 0,
            verdicts: Vec::new(),
            forgotten: Vec::new(),
            refresh,
            epoch: flows.epoch(),
            stamp: 0,
        }
    }

    /// How long after a packet was tracked the cache answers for packets like it.
    pub fn refresh(&self) -> Duration {
        self.refresh
    }

    /// Starts a batch: takes up the epoch of `flows` (the table this cache is in front of);
    /// entries of an older epoch no longer answer.
    pub fn begin_batch(&mut self, flows: &Conntrack<V>) {
        let epoch = flows.epoch();
        if epoch != self.epoch {
            self.epoch = epoch;
            self.new_stamp();
        }
    }

    /// Forgets every entry: no packet is answered for until one like it is remembered again
    /// (for an owner whose verdicts went out of date).
    pub fn clear(&mut self) {
        self.new_stamp();
    }

    /// Moves to a new stamp: no slot made so far answers, and the verdicts are forgotten (their
    /// hits kept until taken).
    fn new_stamp(&mut self) {
        self.stamp = self.stamp.wrapping_add(1);
        let hit = self.verdicts.drain(..).filter(|a| a.packets != 0);
        self.forgotten.extend(hit);
        if self.stamp == 0 {
            self.sets.fill(Set([Slot::EMPTY; 2]));
        }
    }

    /// The verdict for `packet` at `now`, if a packet like it was tracked less than
    /// [`refresh`](Self::refresh) ago in this epoch and remembered; otherwise track it.
    pub fn get(&mut self, now: Instant, packet: &PacketMeta) -> Option<V> {
        self.lookups += 1;
        let i = self.find(now, Key::of(packet)?)?;
        self.verdicts.get(i).map(|a| a.verdict)
    }

    /// As [`get`](Self::get), for the packet of `fields` (without building its
    /// [`PacketMeta`]), with the verdict by reference, and counts the packet, of `bytes` bytes,
    /// as a hit of the verdict it answers with ([`take_hits`](Self::take_hits)).
    #[inline]
    pub fn hit(&mut self, now: Instant, fields: &Ipv4Fields<'_>, bytes: usize) -> Option<&V> {
        self.lookups += 1;
        let i = self.find(now, Key::of_fields(fields)?)?;
        let answer = self.verdicts.get_mut(i)?;
        answer.packets += 1;
        answer.bytes += bytes as u64;
        Some(&answer.verdict)
    }

    /// Hands `f` each verdict [`hit`](Self::hit) answered packets with since the last call,
    /// with their number and bytes (a verdict the cache forgot in between may come more than
    /// once).
    pub fn take_hits(&mut self, mut f: impl FnMut(&V, u64, u64)) {
        for a in self.forgotten.drain(..) {
            f(&a.verdict, a.packets, a.bytes);
        }
        for a in self.verdicts.iter_mut().filter(|a| a.packets != 0) {
            f(&a.verdict, a.packets, a.bytes);
            (a.packets, a.bytes) = (0, 0);
        }
    }

    /// The index in `verdicts` of the verdict for the packets of `key` at
    /// `now`, if a slot answers for them.
    #[inline]
    fn find(&self, now: Instant, key: Key) -> Option<usize> {
        let slot = self
            .sets
            .get(key.set(self.sets.len()))?
            .0
            .iter()
            .find(|s| s.answers_for(&key, now, self.stamp))?;
        Some(usize::from(slot.verdict))
    }

    /// Remembers what tracking `packet` at `now` answered, `tracked`, if packets like it may
    /// skip tracking: it was valid, left its flow as it was (UDP, ICMP echo, TCP ESTABLISHED
    /// without SYN/FIN/RST) and came with a verdict. The caller decides whether that verdict
    /// may be reused at all (and calls this only then).
    ///
    /// When more than one lookup in 64 over a window ends in a packet that finds its set full
    /// (more live flows than the cache holds: a thread serving many ports), the cache doubles,
    /// up to [`MAX_ENTRIES`].
    pub fn insert(&mut self, now: Instant, packet: &PacketMeta, tracked: &Tracked<V>) {
        let (Some(key), Some(verdict)) = (Key::of(packet), tracked.verdict) else {
            return;
        };
        if tracked.state == CtState::Invalid
            || tracked.flow.is_none()
            || tracked.tcp.is_some_and(|s| s != TcpState::Established)
        {
            return;
        }
        if self.sets.is_empty() {
            self.sets = vec![Set([Slot::EMPTY; 2]); ENTRIES / 2].into_boxed_slice();
        }
        if self.lookups >= WINDOW_PER_SET * self.sets.len() as u64 {
            if self.refused * GROW_REFUSED > self.lookups && self.sets.len() * 4 <= MAX_ENTRIES {
                self.grow(now);
            }
            (self.lookups, self.refused) = (0, 0);
        }
        let set = key.set(self.sets.len());
        // The same key's slot, else an empty or outdated one. Two live slots of other keys
        // stay: with more keys in use than a set holds, evicting the older one would make
        // every key of that set miss in turn; this way only the ones that find no slot do.
        let slots = &self.sets[set].0;
        let Some(way) = slots
            .iter()
            .position(|s| s.key() == key)
            .or_else(|| slots.iter().position(|s| !s.answers(now, self.stamp)))
        else {
            self.refused += 1;
            return;
        };
        let verdict = self.intern(verdict);
        self.sets[set].0[way] = Slot {
            words: key.words,
            tag: tag(key.kind, self.stamp),
            verdict,
            until: now + self.refresh,
        };
    }

    /// Doubles the sets; the live slots move to their set among the new ones (each set's go to
    /// two sets of their own, so they all fit).
    fn grow(&mut self, now: Instant) {
        let sets = self.sets.len() * 2;
        let old = std::mem::replace(
            &mut self.sets,
            vec![Set([Slot::EMPTY; 2]); sets].into_boxed_slice(),
        );
        for slot in old.iter().flat_map(|s| s.0) {
            if slot.answers(now, self.stamp) {
                let set = &mut self.sets[slot.key().set(sets)].0;
                if let Some(free) = set.iter_mut().find(|s| s.is_empty()) {
                    *free = slot;
                }
            }
        }
    }

    /// The index of `verdict` in the table of the current stamp, added if new; when the table
    /// is full, a new stamp first (nothing is answered until remembered again).
    fn intern(&mut self, verdict: V) -> u16 {
        // The last one added first: a port's new flows mostly get the same verdict.
        let found = self
            .verdicts
            .last()
            .filter(|a| a.verdict == verdict)
            .map(|_| self.verdicts.len() - 1);
        let anywhere = || self.verdicts.iter().position(|a| a.verdict == verdict);
        let index = match found.or_else(anywhere) {
            Some(i) => i,
            None => {
                if self.verdicts.len() == MAX_VERDICTS {
                    self.new_stamp();
                }
                self.verdicts.push(Answer {
                    verdict,
                    packets: 0,
                    bytes: 0,
                });
                self.verdicts.len() - 1
            }
        };
        // Below MAX_VERDICTS, which fits.
        index as u16
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::conntrack::ConntrackConfig;
    use crate::gateway::frame::{ipv4_frame, udp_frame, Ipv4Route};
    use smoltcp::wire::EthernetAddress;
    use smoltcp::wire::IpProtocol;

    const T0: Instant = Instant::from_millis_const(1_000_000);

    /// The route of the tests' packets: 10.0.0.2 -> 10.0.0.3.
    fn route() -> Ipv4Route {
        Ipv4Route {
            src_mac: EthernetAddress([2, 0, 0, 0, 0, 1]),
            dst_mac: EthernetAddress([2, 0, 0, 0, 0, 2]),
            src_ip: Ipv4Addr::new(10, 0, 0, 2),
            dst_ip: Ipv4Addr::new(10, 0, 0, 3),
        }
    }

    /// A UDP packet 10.0.0.2:`sport` -> 10.0.0.3:53.
    fn udp(sport: u16) -> PacketMeta {
        let route = route();
        PacketMeta::parse_ipv4(1, &udp_frame(&route, sport, 53, b"x")[14..]).unwrap()
    }

    /// Tracks `p` in `ct`, gives its flow `verdict` and offers it to `cache`.
    fn remember(ct: &Conntrack<u32>, cache: &mut FlowCache<u32>, p: &PacketMeta, verdict: u32) {
        let flow = ct.track(T0, p).unwrap().flow.unwrap();
        ct.set_verdict(&flow, verdict);
        cache.begin_batch(ct);
        cache.insert(T0, p, &ct.track(T0, p).unwrap());
    }

    #[test]
    fn a_tcp_segment_has_the_same_key_from_its_fields_and_from_its_meta() {
        let route = route();
        let mut plain_acks = 0;
        for flags in 0..=u8::MAX {
            let frame = ipv4_frame(&route, IpProtocol::Tcp, 20, |tcp| {
                tcp[..4].copy_from_slice(&[0x9c, 0x40, 0, 80]);
                tcp[12] = 0x50;
                tcp[13] = flags;
            });
            let fields = Ipv4Fields::parse(1, &frame[14..], frame.len() - 14).unwrap();
            let key = Key::of_fields(&fields);
            assert_eq!(key, Key::of(&fields.meta().unwrap()), "flags {flags:#04x}");
            plain_acks += usize::from(key.is_some());
        }
        // ACK set, SYN, FIN and RST clear: 4 of the 8 bits free.
        assert_eq!(plain_acks, 16);
    }

    #[test]
    fn a_packet_that_differs_in_one_field_is_not_answered_for() {
        let ct = Conntrack::new(ConntrackConfig::default());
        let mut cache = FlowCache::new(&ct);
        let p = udp(1000);
        remember(&ct, &mut cache, &p, 7);
        assert_eq!(cache.get(T0, &p), Some(7));
        let changed = |change: &dyn Fn(&mut PacketMeta)| {
            let mut q = p;
            change(&mut q);
            q
        };
        let ack = PacketKind::Tcp(TcpFlags {
            ack: true,
            ..TcpFlags::default()
        });
        let others = [
            changed(&|q| q.tuple.zone ^= 1 << 31),
            changed(&|q| q.tuple.src.addr = Ipv4Addr::new(10, 0, 0, 4).into()),
            changed(&|q| q.tuple.dst.addr = Ipv4Addr::new(11, 0, 0, 3).into()),
            changed(&|q| q.tuple.src.port ^= 1 << 15),
            changed(&|q| q.tuple.dst.port ^= 1),
            changed(&|q| q.kind = ack),
            changed(&|q| q.kind = PacketKind::IcmpEcho { request: true }),
            // Source and destination swapped: the reply direction.
            changed(&|q| q.tuple = q.tuple.reversed()),
        ];
        for (i, q) in others.iter().enumerate() {
            assert_ne!(Key::of(q), Key::of(&p), "{i}");
            assert_eq!(cache.get(T0, q), None, "{i}");
        }
        // A slot answers for its own key only, whatever set the other keys are in: any one
        // bit of the words or the kind changed misses.
        let key = Key::of(&p).unwrap();
        let slot = Slot {
            words: key.words,
            tag: tag(key.kind, 3),
            verdict: 0,
            until: T0 + Duration::from_millis(1),
        };
        assert!(slot.answers_for(&key, T0, 3));
        assert!(!slot.answers_for(&key, T0, 4) && !slot.answers_for(&key, slot.until, 3));
        for bit in 0..128 {
            let mut other = key;
            other.words[bit / 64] ^= 1 << (bit % 64);
            assert!(!slot.answers_for(&other, T0, 3), "bit {bit}");
        }
        for kind in [TCP_ACK, ECHO_REQUEST, ECHO_REPLY] {
            assert!(
                !slot.answers_for(&Key { kind, ..key }, T0, 3),
                "kind {kind}"
            );
        }
    }

    #[test]
    fn a_full_set_keeps_its_live_entries() {
        let set_of = |port| Key::of(&udp(port)).unwrap().set(ENTRIES / 2);
        let ports: Vec<u16> = (1000..u16::MAX)
            .filter(|&p| set_of(p) == set_of(1000))
            .take(3)
            .collect();
        let ct = Conntrack::new(ConntrackConfig::default());
        let mut cache = FlowCache::new(&ct);
        for &p in &ports {
            remember(&ct, &mut cache, &udp(p), 7);
        }
        let now = T0 + Duration::from_millis(10);
        assert_eq!(cache.get(now, &udp(ports[0])), Some(7));
        assert_eq!(cache.get(now, &udp(ports[1])), Some(7));
        assert_eq!(cache.get(now, &udp(ports[2])), None);
        // Once an entry is outdated, the next packet that finds no slot takes it.
        let later = T0 + cache.refresh();
        cache.insert(
            later,
            &udp(ports[2]),
            &ct.track(later, &udp(ports[2])).unwrap(),
        );
        assert_eq!(cache.get(later, &udp(ports[2])), Some(7));
    }

    /// Packets of `flows` in turn, `rounds` times, each tracked and offered to `cache` when it
    /// has no answer (as the policy stage does); the misses of the last round.
    fn traffic(
        ct: &Conntrack<u32>,
        cache: &mut FlowCache<u32>,
        flows: u16,
        rounds: usize,
    ) -> usize {
        let ports = 1000..1000 + flows;
        for port in ports.clone() {
            let flow = ct.track(T0, &udp(port)).unwrap().flow.unwrap();
            ct.set_verdict(&flow, 7);
        }
        cache.begin_batch(ct);
        let mut misses = 0;
        for _ in 0..rounds {
            misses = 0;
            for port in ports.clone() {
                if cache.get(T0, &udp(port)).is_none() {
                    misses += 1;
                    cache.insert(T0, &udp(port), &ct.track(T0, &udp(port)).unwrap());
                }
            }
        }
        misses
    }

    /// A UDP packet of guest `guest` (10.0.1.`guest`) from `sport` to 10.0.0.3:53.
    fn guest_udp(guest: u8, sport: u16) -> PacketMeta {
        let mut p = udp(sport);
        p.tuple.src.addr = Ipv4Addr::new(10, 0, 1, guest).into();
        p
    }

    #[test]
    fn few_packets_of_a_worker_of_16_ports_find_their_sets_full() {
        // 16 guests of 256 flows each (source ports 40000..40256, as the load generator sends
        // them), in turn: the cache grows until fewer than one in a hundred miss.
        let ct = Conntrack::new(ConntrackConfig::default());
        let mut cache = FlowCache::new(&ct);
        let packets: Vec<PacketMeta> = (2..18)
            .flat_map(|g| (40000..40256).map(move |p| guest_udp(g, p)))
            .collect();
        for p in &packets {
            let flow = ct.track(T0, p).unwrap().flow.unwrap();
            ct.set_verdict(&flow, 7);
        }
        cache.begin_batch(&ct);
        let mut misses = 0;
        for _ in 0..100 {
            misses = 0;
            for p in &packets {
                if cache.get(T0, p).is_none() {
                    misses += 1;
                    cache.insert(T0, p, &ct.track(T0, p).unwrap());
                }
            }
        }
        assert!(
            misses * 100 < packets.len(),
            "{misses} of {} miss",
            packets.len()
        );
        assert!(cache.sets.len() <= MAX_ENTRIES / 2);
    }

    #[test]
    fn a_cache_grows_while_many_of_its_packets_find_no_slot() {
        let ct = Conntrack::new(ConntrackConfig::default());
        let mut cache = FlowCache::new(&ct);
        let flows = 4 * ENTRIES as u16;
        let misses = traffic(&ct, &mut cache, flows, 200);
        assert!(cache.sets.len() > ENTRIES / 2 && cache.sets.len() <= MAX_ENTRIES / 2);
        assert!(misses * 16 < usize::from(flows), "{misses} of {flows} miss");
        // A cache whose flows fit keeps its size.
        let ct = Conntrack::new(ConntrackConfig::default());
        let mut cache = FlowCache::new(&ct);
        traffic(&ct, &mut cache, ENTRIES as u16 / 4, 1000);
        assert_eq!(cache.sets.len(), ENTRIES / 2);
    }

    #[test]
    fn verdicts_are_shared_and_a_full_table_forgets_every_entry() {
        let ct = Conntrack::new(ConntrackConfig::default());
        let mut cache = FlowCache::new(&ct);
        let ports = 1000..1000 + MAX_VERDICTS as u16;
        for (i, port) in ports.clone().enumerate() {
            remember(&ct, &mut cache, &udp(port), (i % 2) as u32);
        }
        assert_eq!(cache.verdicts.len(), 2);
        // All but the few that found their set full answer, each with its own verdict.
        let answered = ports.clone().enumerate().filter(|&(i, port)| {
            let v = cache.get(T0, &udp(port));
            assert!(v.is_none_or(|v| v == (i % 2) as u32));
            v.is_some()
        });
        assert!(answered.count() > MAX_VERDICTS * 3 / 4);
        // Fill the table with distinct verdicts, then one more: only that one answers.
        let ct = Conntrack::new(ConntrackConfig::default());
        let mut cache = FlowCache::new(&ct);
        for (i, port) in ports.clone().enumerate() {
            remember(&ct, &mut cache, &udp(port), 100 + i as u32);
        }
        assert_eq!(cache.verdicts.len(), MAX_VERDICTS);
        remember(&ct, &mut cache, &udp(2000), 99);
        assert_eq!(cache.get(T0, &udp(2000)), Some(99));
        assert!(ports.into_iter().all(|p| cache.get(T0, &udp(p)).is_none()));
    }

    #[test]
    fn hits_are_counted_per_verdict_until_taken_even_when_forgotten() {
        let route = route();
        let frames: Vec<_> = (1000..1003)
            .map(|p| udp_frame(&route, p, 53, b"x"))
            .collect();
        let fields = |i: usize| Ipv4Fields::parse(1, &frames[i][14..], frames[i].len() - 14);
        let ct = Conntrack::new(ConntrackConfig::default());
        let mut cache = FlowCache::new(&ct);
        for (i, verdict) in [(0, 7), (1, 7), (2, 8)] {
            remember(
                &ct,
                &mut cache,
                &fields(i).unwrap().meta().unwrap(),
                verdict,
            );
        }
        let taken = |cache: &mut FlowCache<u32>| {
            let mut hits = Vec::new();
            cache.take_hits(|&v, packets, bytes| hits.push((v, packets, bytes)));
            hits
        };
        for (i, bytes) in [(0, 100), (1, 60), (2, 64), (0, 1)] {
            assert!(cache.hit(T0, &fields(i).unwrap(), bytes).is_some());
        }
        // A lookup counts nothing.
        assert_eq!(cache.get(T0, &fields(0).unwrap().meta().unwrap()), Some(7));
        assert_eq!(taken(&mut cache), [(7, 3, 161), (8, 1, 64)]);
        assert_eq!(taken(&mut cache), []);
        // Hits of verdicts a new stamp forgot are kept until taken.
        assert!(cache.hit(T0, &fields(2).unwrap(), 64).is_some());
        cache.clear();
        assert!(cache.hit(T0, &fields(2).unwrap(), 64).is_none());
        assert_eq!(taken(&mut cache), [(8, 1, 64)]);
        assert_eq!(taken(&mut cache), []);
    }

    #[test]
    fn a_wrapped_stamp_answers_for_no_older_entry() {
        let ct = Conntrack::new(ConntrackConfig::default());
        let mut cache = FlowCache::new(&ct);
        remember(&ct, &mut cache, &udp(1000), 7);
        assert_eq!(cache.get(T0, &udp(1000)), Some(7));
        for _ in 0..=u16::MAX {
            cache.new_stamp();
        }
        // The same stamp and verdict index as when the entry was made.
        cache.verdicts.push(Answer {
            verdict: 8,
            packets: 0,
            bytes: 0,
        });
        assert_eq!(cache.get(T0, &udp(1000)), None);
    }
}
