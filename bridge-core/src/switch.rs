//! The switch: networks, ports, and the forwarding decision for each frame.
//!
//! Topology (networks and their ports) is an immutable snapshot behind an [`ArcSwap`]: the
//! datapath loads it without locking, and the rare changes (add/remove network or port) copy,
//! modify and publish it under an admin mutex. FDBs are per network (see [`crate::fdb`]).
//!
//! A batch of frames from one port goes through an [`IngressBatch`]: the topology and the
//! port's FDB are loaded once per batch, a source address is learned and a destination looked
//! up once per batch, and the port's rx counters are added once per batch. A thread keeps its
//! recent forward decisions in a [`DecisionCache`], and a frame like one of them takes it again
//! while it holds ([`SwitchMemo`]).

use std::convert::Infallible;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex, PoisonError};

use arc_swap::{ArcSwap, Guard};
use smoltcp::wire::EthernetAddress;

use crate::counters::{DropReason, PortCounters, PortStats};
use crate::egress::Egress;
use crate::fdb::{self, FdbEntry, Key, Learn};
use crate::frame::{self, MacHeader};
use crate::network::{LimitAction, Network, NetworkConfig, NetworkId, NetworkStats};
use crate::port::{IngressTag, Port, PortConfig, PortId};
use crate::time::Instant;
use crate::vlan::VlanId;

/// Errors of switch configuration calls.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Error {
    /// The network does not exist.
    #[error("no network {0}")]
    NoSuchNetwork(NetworkId),
    /// The port does not exist.
    #[error("no port {0}")]
    NoSuchPort(PortId),
    /// A network can only be removed once it has no ports.
    #[error("{0} still has ports")]
    NetworkHasPorts(NetworkId),
    /// A static entry names a port of another network.
    #[error("{port} is not on {network}")]
    PortNotOnNetwork {
        /// The port.
        port: PortId,
        /// The network.
        network: NetworkId,
    },
    /// A static entry's VLAN does not fit the network (`None` exactly when the network does not
    /// filter VLANs) or the port is not a member of it.
    #[error("VLAN {vlan:?} does not fit {port} on {network}")]
    StaticVlan {
        /// The VLAN given.
        vlan: Option<VlanId>,
        /// The port.
        port: PortId,
        /// The network.
        network: NetworkId,
    },
    /// Static entries are for unicast addresses (group addresses are always flooded), not
    /// the all-zero address.
    #[error("static entry for group or zero address {0}")]
    StaticNotUnicast(EthernetAddress),
}

/// What to do with a frame. Small and `Copy`; the caller carries it out.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Decision {
    /// Deliver to one port, applying `egress` to the tag.
    Forward {
        /// The destination port.
        port: PortId,
        /// The tag action for that port.
        egress: Egress,
    },
    /// Deliver to every other port of the network that is a member of the frame's VLAN:
    /// enumerate them with [`Switch::for_each_flood_target`].
    Flood(Flood),
    /// Drop the frame (already counted on the ingress port).
    Drop(DropReason),
}

/// A flood: broadcast, multicast or unknown unicast within one network and VLAN.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Flood {
    network: NetworkId,
    ingress: PortId,
    vlan: Option<VlanId>,
    tag: IngressTag,
}

impl Flood {
    /// The network flooded.
    pub fn network(&self) -> NetworkId {
        self.network
    }

    /// The port the frame came from (never a target).
    pub fn ingress(&self) -> PortId {
        self.ingress
    }

    /// The frame's VLAN (`None` on networks that do not filter VLANs).
    pub fn vlan(&self) -> Option<VlanId> {
        self.vlan
    }
}

/// A network as listed by [`Switch::networks`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NetworkInfo {
    /// Its id.
    pub id: NetworkId,
    /// Its configuration.
    pub config: NetworkConfig,
    /// Its ports.
    pub ports: Vec<PortId>,
    /// Its FDB statistics.
    pub stats: NetworkStats,
}

/// A port as shown by [`Switch::port_info`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PortInfo {
    /// The network it is attached to.
    pub network: NetworkId,
    /// Its configuration.
    pub config: PortConfig,
    /// Whether it is up.
    pub up: bool,
    /// Its counters.
    pub stats: PortStats,
}

#[derive(Debug, Clone)]
struct NetworkSlot {
    network: Arc<Network>,
    members: Vec<Arc<Port>>,
}

/// The generations of the topologies published by all switches so far.
static GENERATIONS: AtomicU64 = AtomicU64::new(0);

/// One published state of networks and ports, indexed by id.
#[derive(Debug, Clone, Default)]
struct Topology {
    ports: Vec<Option<Arc<Port>>>,
    networks: Vec<Option<NetworkSlot>>,
    /// Which published state this is: each of any switch's has another ([`GENERATIONS`]), so
    /// that a [`SwitchMemo`] holds for the switch and state it was made in only.
    generation: u64,
}

impl Topology {
    fn port(&self, id: PortId) -> Option<&Arc<Port>> {
        self.ports.get(id.0 as usize)?.as_ref()
    }

    fn network(&self, id: NetworkId) -> Option<&NetworkSlot> {
        self.networks.get(id.0 as usize)?.as_ref()
    }

    fn network_mut(&mut self, id: NetworkId) -> Result<&mut NetworkSlot, Error> {
        let slot = self
            .networks
            .get_mut(id.0 as usize)
            .and_then(Option::as_mut);
        slot.ok_or(Error::NoSuchNetwork(id))
    }
}

/// Index of the first free slot (or the next one).
fn free_slot<T>(slots: &[Option<T>]) -> usize {
    slots
        .iter()
        .position(Option::is_none)
        .unwrap_or(slots.len())
}

fn put<T>(slots: &mut Vec<Option<T>>, index: usize, value: T) {
    if index == slots.len() {
        slots.push(Some(value));
    } else {
        slots[index] = Some(value);
    }
}

/// Whether `mac` ([`frame::mac_bits`]) is a reserved IEEE 802.1D group address
/// (01:80:c2:00:00:00..0f), which bridges never forward.
fn is_link_local(mac: u64) -> bool {
    mac & !0xf == 0x0180_c200_0000
}

/// The tag action for a frame of `vlan` (arrived with `tag`) leaving through `port`.
#[inline]
fn egress_for(port: &Port, vlan: Option<VlanId>, tag: IngressTag) -> Option<Egress> {
    match vlan {
        None => Some(Egress::AsIs),
        Some(vlan) => port.config.vlan.egress(vlan, tag),
    }
}

/// A learning L2 switch with isolated networks, VLANs and FDB limits. `Send + Sync`: share it
/// (in an `Arc`) between the datapath workers and the control plane.
#[derive(Debug, Default)]
pub struct Switch {
    topology: ArcSwap<Topology>,
    admin: Mutex<()>,
    incarnations: AtomicU32,
    unknown_port_drops: AtomicU64,
}

impl Switch {
    /// A switch with no networks.
    pub fn new() -> Switch {
        Switch::default()
    }

    /// Decides what to do with `frame`, received at `now` on `ingress`: learns its source,
    /// counts it, and returns the decision. Takes no lock unless it learns a new or moved
    /// address (then the network's FDB writer lock); allocates nothing (see [`crate::fdb`] for
    /// table growth). A batch of frames from one port costs less through [`batch`](Self::batch).
    pub fn process(&self, now: Instant, ingress: PortId, frame: &[u8]) -> Decision {
        self.process_head(now, ingress, frame, frame.len())
    }

    /// [`process`](Self::process) for a frame of `len` bytes of which only the first are at
    /// hand: a device that copies frames once, straight between guests, reads the headers out
    /// of guest memory first. `head` must hold at least the Ethernet header and the 802.1Q tag
    /// the frame has (or all of a shorter frame).
    #[inline]
    pub fn process_head(&self, now: Instant, ingress: PortId, head: &[u8], len: usize) -> Decision {
        self.batch(now, ingress).process_head(head, len)
    }

    /// The switch for a batch of frames received at `now` on `ingress`, decided one by one
    /// with [`IngressBatch::process_head`] as [`process_head`](Self::process_head) would.
    #[inline]
    pub fn batch(&self, now: Instant, ingress: PortId) -> IngressBatch<'_> {
        let topology = self.topology.load();
        let port = topology.port(ingress);
        let slot = port.and_then(|p| topology.network(p.network));
        let fdb = slot.map(|slot| slot.network.fdb.view(now));
        IngressBatch {
            switch: self,
            topology,
            ingress,
            now,
            fdb,
            rx_frames: 0,
            rx_bytes: 0,
        }
    }

    /// The decision for a frame with `header` from `port`; `plain` is cleared if its source
    /// hit a learning limit (a like frame must be decided again, to be counted). Inlined in
    /// both callers: out of line, its call costs a fifth of it.
    #[inline(always)]
    fn decide(
        topology: &Topology,
        port: &Arc<Port>,
        header: &MacHeader,
        fdb: Option<&mut fdb::View>,
        plain: &mut bool,
    ) -> Decision {
        let drop = Decision::Drop;
        if !port.is_up() {
            return drop(DropReason::PortDown);
        }
        if header.src & frame::GROUP_BIT != 0 {
            return drop(DropReason::SourceMulticast);
        }
        if header.src == 0 {
            return drop(DropReason::SourceZero);
        }
        if is_link_local(header.dst) {
            return drop(DropReason::LinkLocal);
        }
        let (Some(slot), Some(view)) = (topology.network(port.network), fdb) else {
            // A port's network outlives the port (remove_network requires no ports).
            return drop(DropReason::NoSuchPort);
        };
        let network = &slot.network;
        let (vlan, tag) = if network.config.vlan_filtering {
            match port.config.vlan.ingress(header.tci) {
                Some((vlan, tag)) => (Some(vlan), tag),
                None => return drop(DropReason::VlanNotAllowed),
            }
        } else {
            (None, IngressTag::Untagged)
        };
        let src = Key::of_bits(vlan, header.src);
        match network.fdb.learn_in(view, src, port, &topology.ports) {
            Learn::Known | Learn::Added | Learn::Moved => {}
            Learn::SpoofedStatic => return drop(DropReason::SpoofedStatic),
            Learn::Limit => {
                *plain = false;
                port.counters.record_fdb_limit_hit();
                if network.config.limit_action == LimitAction::Drop {
                    return drop(DropReason::FdbLimit);
                }
            }
        }
        let flood = || {
            Decision::Flood(Flood {
                network: port.network,
                ingress: port.id,
                vlan,
                tag,
            })
        };
        if header.dst & frame::GROUP_BIT != 0 {
            return flood();
        }
        let dst = Key::of_bits(vlan, header.dst);
        let dst = match network.fdb.lookup_in(view, dst, &topology.ports) {
            Some(dst) if dst.network == port.network => dst,
            _ => return flood(),
        };
        if Arc::ptr_eq(dst, port) {
            return drop(DropReason::Hairpin);
        }
        if !dst.is_up() {
            return drop(DropReason::EgressDown);
        }
        match egress_for(dst, vlan, tag) {
            Some(egress) => Decision::Forward {
                port: dst.id,
                egress,
            },
            None => drop(DropReason::VlanNotAllowed),
        }
    }

    /// Calls `f` for each port a flood reaches, with its tag action: the network's other ports
    /// that are up and members of the VLAN. Allocates nothing and holds no lock while `f` runs.
    pub fn for_each_flood_target(&self, flood: &Flood, mut f: impl FnMut(PortId, Egress)) {
        let topology = self.topology.load();
        let Some(slot) = topology.network(flood.network) else {
            return;
        };
        for member in &slot.members {
            if member.id == flood.ingress || !member.is_up() {
                continue;
            }
            if let Some(egress) = egress_for(member, flood.vlan, flood.tag) {
                f(member.id, egress);
            }
        }
    }

    /// Runs a topology change under the admin lock and publishes the result.
    fn change<R, E>(&self, f: impl FnOnce(&mut Topology) -> Result<R, E>) -> Result<R, E> {
        let _admin = self.admin.lock().unwrap_or_else(PoisonError::into_inner);
        let mut topology = Topology::clone(&self.topology.load());
        let result = f(&mut topology)?;
        topology.generation = GENERATIONS.fetch_add(1, Relaxed) + 1;
        self.topology.store(Arc::new(topology));
        Ok(result)
    }

    /// Adds a network.
    pub fn add_network(&self, config: NetworkConfig) -> NetworkId {
        let Ok(id) = self.change(|t| {
            let index = free_slot(&t.networks);
            let slot = NetworkSlot {
                network: Arc::new(Network::new(config)),
                members: Vec::new(),
            };
            put(&mut t.networks, index, slot);
            Ok::<_, Infallible>(NetworkId(index as u32))
        });
        id
    }

    /// Removes a network that has no ports left.
    pub fn remove_network(&self, id: NetworkId) -> Result<(), Error> {
        self.change(|t| {
            if !t.network_mut(id)?.members.is_empty() {
                return Err(Error::NetworkHasPorts(id));
            }
            t.networks[id.0 as usize] = None;
            Ok(())
        })
    }

    /// Attaches a new port (up) to a network.
    pub fn add_port(&self, network: NetworkId, config: PortConfig) -> Result<PortId, Error> {
        self.change(|t| {
            let id = PortId(free_slot(&t.ports) as u32);
            let incarnation = self.incarnations.fetch_add(1, Relaxed);
            let port = Arc::new(Port::new(id, incarnation, network, config));
            t.network_mut(network)?.members.push(Arc::clone(&port));
            put(&mut t.ports, id.0 as usize, port);
            Ok(id)
        })
    }

    /// Detaches a port and flushes its FDB entries (learned and static).
    pub fn remove_port(&self, id: PortId) -> Result<(), Error> {
        let (port, network) = self.change(|t| {
            let port = t.port(id).cloned().ok_or(Error::NoSuchPort(id))?;
            let slot = t.network_mut(port.network)?;
            slot.members.retain(|p| p.id != id);
            let network = Arc::clone(&slot.network);
            t.ports[id.0 as usize] = None;
            port.mark_removed();
            Ok((port, network))
        })?;
        network.fdb.flush_port(&port);
        Ok(())
    }

    /// Sets a port's administrative state; a port that is down neither sends nor receives.
    pub fn set_port_up(&self, id: PortId, up: bool) -> Result<(), Error> {
        let topology = self.topology.load();
        topology.port(id).ok_or(Error::NoSuchPort(id))?.set_up(up);
        Ok(())
    }

    /// Checks a static entry's arguments; returns the network and the port.
    fn static_target(
        topology: &Topology,
        network: NetworkId,
        vlan: Option<VlanId>,
        port: PortId,
    ) -> Result<(Arc<Network>, Arc<Port>), Error> {
        let slot = topology
            .network(network)
            .ok_or(Error::NoSuchNetwork(network))?;
        let p = topology.port(port).ok_or(Error::NoSuchPort(port))?;
        if p.network != network {
            return Err(Error::PortNotOnNetwork { port, network });
        }
        let fits = match vlan {
            None => !slot.network.config.vlan_filtering,
            Some(v) => {
                slot.network.config.vlan_filtering
                    && p.config.vlan.egress(v, IngressTag::Untagged).is_some()
            }
        };
        if !fits {
            return Err(Error::StaticVlan {
                vlan,
                port,
                network,
            });
        }
        Ok((Arc::clone(&slot.network), Arc::clone(p)))
    }

    /// Adds (or replaces) a static FDB entry: `mac` in `vlan` is reached through `port`.
    /// `vlan` is `None` exactly on networks that do not filter VLANs.
    pub fn add_static(
        &self,
        network: NetworkId,
        vlan: Option<VlanId>,
        mac: EthernetAddress,
        port: PortId,
    ) -> Result<(), Error> {
        if !mac.is_unicast() || mac.0 == [0; 6] {
            return Err(Error::StaticNotUnicast(mac));
        }
        // The admin lock orders this against remove_port's flush.
        let _admin = self.admin.lock().unwrap_or_else(PoisonError::into_inner);
        let topology = self.topology.load();
        let (net, port) = Self::static_target(&topology, network, vlan, port)?;
        net.fdb
            .add_static(Key::new(vlan, mac), &port, &topology.ports);
        Ok(())
    }

    /// Removes a static FDB entry; returns whether there was one.
    pub fn remove_static(
        &self,
        network: NetworkId,
        vlan: Option<VlanId>,
        mac: EthernetAddress,
    ) -> Result<bool, Error> {
        let topology = self.topology.load();
        let slot = topology
            .network(network)
            .ok_or(Error::NoSuchNetwork(network))?;
        Ok(slot.network.fdb.remove_static(Key::new(vlan, mac)))
    }

    /// Removes learned FDB entries not seen for their network's ageing time; returns how many.
    /// Call it periodically (e.g. every second); lookups ignore expired entries meanwhile.
    pub fn age(&self, now: Instant) -> usize {
        let topology = self.topology.load();
        let networks = topology.networks.iter().flatten();
        networks
            .map(|slot| slot.network.fdb.age(now, &topology.ports))
            .sum()
    }

    /// Calls `f` for each FDB entry of a network. Runs under the network's FDB writer lock
    /// (learning of new addresses waits; lookups do not): `f` must not call back into the switch.
    pub fn for_each_fdb_entry(
        &self,
        network: NetworkId,
        now: Instant,
        f: impl FnMut(FdbEntry),
    ) -> Result<(), Error> {
        let topology = self.topology.load();
        let slot = topology
            .network(network)
            .ok_or(Error::NoSuchNetwork(network))?;
        slot.network.fdb.for_each(now, f);
        Ok(())
    }

    /// A port's live counters, to count tx at delivery
    /// ([`PortCounters::record_tx`]). Cache the `Arc` per destination.
    pub fn port_counters(&self, id: PortId) -> Option<Arc<PortCounters>> {
        let topology = self.topology.load();
        Some(Arc::clone(&topology.port(id)?.counters))
    }

    /// The network port `id` is attached to.
    pub fn port_network(&self, id: PortId) -> Option<NetworkId> {
        Some(self.topology.load().port(id)?.network)
    }

    /// A port's network, configuration, state and counters.
    pub fn port_info(&self, id: PortId) -> Option<PortInfo> {
        let topology = self.topology.load();
        let port = topology.port(id)?;
        Some(PortInfo {
            network: port.network,
            config: port.config.clone(),
            up: port.is_up(),
            stats: port.counters.snapshot(),
        })
    }

    /// All networks with their ports and FDB statistics.
    pub fn networks(&self) -> Vec<NetworkInfo> {
        let topology = self.topology.load();
        let slots = topology.networks.iter().enumerate();
        let present = slots.filter_map(|(i, slot)| Some((i, slot.as_ref()?)));
        present
            .map(|(i, slot)| NetworkInfo {
                id: NetworkId(i as u32),
                config: slot.network.config.clone(),
                ports: slot.members.iter().map(|p| p.id).collect(),
                stats: slot.network.fdb.stats(),
            })
            .collect()
    }

    /// Frames dropped because their ingress port did not exist.
    pub fn unknown_port_drops(&self) -> u64 {
        self.unknown_port_drops.load(Relaxed)
    }
}

/// A forward decision of an [`IngressBatch`], kept by its caller (in a [`DecisionCache`]) so
/// that a frame like the one it was made for is decided without the switch's lookups
/// ([`IngressBatch::process_head_memo`]). It holds for a frame from the same port whose first
/// 16 bytes (addresses, type or tag, and two more) are the same, while the topology and the
/// network's FDB entries stay as they were (the FDB's epoch: none removed or moved) and both
/// ports are up; and for at most the FDB's refresh interval (1/256 of its ageing time), so that
/// the source's entry is refreshed, and a destination that ages out is found gone, as often as
/// without it.
#[derive(Debug, Clone, Copy)]
pub struct SwitchMemo {
    head: [u64; 2],
    ingress: PortId,
    out: PortId,
    egress: Egress,
    topology: u64,
    fdb: u64,
    until: Instant,
}

impl Default for SwitchMemo {
    /// A memo that holds for no frame.
    fn default() -> Self {
        SwitchMemo {
            head: [0; 2],
            ingress: PortId(0),
            out: PortId(0),
            egress: Egress::AsIs,
            topology: 0,
            fdb: 0,
            until: Instant::ZERO,
        }
    }
}

/// Entries of a [`DecisionCache`] (56 bytes each).
const DECISIONS: usize = 1024;

/// A thread's forward decisions, by ingress port and the frame's first 16 bytes: each
/// [`SwitchMemo`] in the entry a hash of those picks, the last decision made for frames that
/// share the entry. A datapath thread's frames mostly come in a few address pairs per port,
/// which keep their entries; a pair that shares one with another is decided afresh as often
/// as they take turns.
#[derive(Debug)]
pub struct DecisionCache {
    entries: Box<[SwitchMemo]>,
}

impl Default for DecisionCache {
    /// An empty cache (its entries are allocated at the first lookup).
    fn default() -> Self {
        DecisionCache {
            entries: Box::default(),
        }
    }
}

impl DecisionCache {
    /// The entry for frames from `ingress` whose first bytes are `head`.
    #[inline]
    pub fn entry(&mut self, ingress: PortId, head: &[u8]) -> &mut SwitchMemo {
        if self.entries.is_empty() {
            self.allocate();
        }
        let [a, b] = head_words(head).unwrap_or_default();
        let h = (a ^ b.rotate_left(23) ^ u64::from(ingress.0)).wrapping_mul(0x9e37_79b9_7f4a_7c15);
        let i = (h >> (64 - DECISIONS.trailing_zeros())) as usize;
        &mut self.entries[i % DECISIONS]
    }

    #[cold]
    fn allocate(&mut self) {
        self.entries = vec![SwitchMemo::default(); DECISIONS].into_boxed_slice();
    }
}

/// The first 16 bytes of a frame's head as two words (`None` if shorter).
#[inline]
fn head_words(head: &[u8]) -> Option<[u64; 2]> {
    let (first, rest) = head.split_first_chunk::<8>()?;
    let second = rest.first_chunk::<8>()?;
    Some([u64::from_ne_bytes(*first), u64::from_ne_bytes(*second)])
}

/// The switch as a batch of frames from one port sees it ([`Switch::batch`]): decisions are
/// those of [`Switch::process_head`] frame by frame, for less work per frame.
///
/// The topology (networks, ports, their configuration) is the one published when the batch
/// began: changes take effect at the next batch. All its frames are taken as received at the
/// time the batch began. Port states (up, down), FDB entries and limits are read live for each
/// frame as before, except that a source address is learned (and its entry's age refreshed) at
/// its first frame in the batch and a destination looked up at its first frame, not again for
/// the next ones, unless the FDB changed an entry's port or removed one meanwhile (a move, a
/// static entry, ageing, a flush): then they are learned and looked up again as for a fresh
/// frame. The port's rx counters are added when the batch is dropped, so they lag by at most
/// one batch; drops are counted at once.
#[derive(Debug)]
pub struct IngressBatch<'s> {
    switch: &'s Switch,
    topology: Guard<Arc<Topology>>,
    ingress: PortId,
    now: Instant,
    /// The ingress network's FDB view, while the port and its network exist.
    fdb: Option<fdb::View>,
    rx_frames: u64,
    rx_bytes: u64,
}

impl IngressBatch<'_> {
    /// Decides what to do with the next frame of the batch: [`Switch::process_head`].
    pub fn process_head(&mut self, head: &[u8], len: usize) -> Decision {
        self.decide_head(head, len, &mut true)
    }

    /// [`process_head`](Self::process_head) for a frame whose decision `memo` may hold, kept
    /// from an earlier frame like it (see [`SwitchMemo`]); a decision made afresh is kept in
    /// `memo` if frames like this one may take it.
    #[inline(always)]
    pub fn process_head_memo(
        &mut self,
        head: &[u8],
        len: usize,
        memo: &mut SwitchMemo,
    ) -> Decision {
        match self.recall(head, len, memo) {
            Some(decision) => decision,
            None => self.decide_and_remember(head, len, memo),
        }
    }

    /// The decision `memo` holds for the frame, counted, if it holds for it now.
    #[inline(always)]
    fn recall(&mut self, head: &[u8], len: usize, memo: &SwitchMemo) -> Option<Decision> {
        let alike = memo.head == head_words(head)?
            && memo.ingress == self.ingress
            && memo.topology == self.topology.generation
            && self.now < memo.until;
        if !alike || self.fdb.as_ref()?.epoch_now() != memo.fdb {
            return None;
        }
        let (port, out) = (
            self.topology.port(self.ingress)?,
            self.topology.port(memo.out)?,
        );
        if !port.is_up() || !out.is_up() {
            return None;
        }
        self.rx_frames += 1;
        self.rx_bytes += len as u64;
        Some(Decision::Forward {
            port: memo.out,
            egress: memo.egress,
        })
    }

    /// Decides the frame afresh and keeps a forward decision in `memo`, unless its source hit
    /// a learning limit (out of line: a flow's frames mostly find their decision kept).
    #[inline(never)]
    fn decide_and_remember(&mut self, head: &[u8], len: usize, memo: &mut SwitchMemo) -> Decision {
        let mut plain = true;
        let decision = self.decide_head(head, len, &mut plain);
        let Decision::Forward { port: out, egress } = decision else {
            return decision;
        };
        let port = self.topology.port(self.ingress);
        let slot = port.and_then(|p| self.topology.network(p.network));
        if let (true, Some(words), Some(slot), Some(view)) =
            (plain, head_words(head), slot, self.fdb.as_ref())
        {
            *memo = SwitchMemo {
                head: words,
                ingress: self.ingress,
                out,
                egress,
                topology: self.topology.generation,
                fdb: view.epoch(),
                until: self.now + slot.network.fdb.refresh_interval(),
            };
        }
        decision
    }

    /// [`process_head`](Self::process_head), clearing `plain` if the frame's source hit a
    /// learning limit.
    #[inline(always)]
    fn decide_head(&mut self, head: &[u8], len: usize, plain: &mut bool) -> Decision {
        let Some(port) = self.topology.port(self.ingress) else {
            self.switch.unknown_port_drops.fetch_add(1, Relaxed);
            return Decision::Drop(DropReason::NoSuchPort);
        };
        self.rx_frames += 1;
        self.rx_bytes += len as u64;
        let decision = match MacHeader::parse(head) {
            Ok(header) => Switch::decide(&self.topology, port, &header, self.fdb.as_mut(), plain),
            Err(frame::Error::TooShort) => Decision::Drop(DropReason::TooShort),
            Err(frame::Error::TruncatedTag) => Decision::Drop(DropReason::Malformed),
        };
        if let Decision::Drop(reason) = decision {
            port.counters.record_drop(reason);
        }
        decision
    }

    /// [`process_head`](Self::process_head) for a whole frame.
    pub fn process(&mut self, frame: &[u8]) -> Decision {
        self.process_head(frame, frame.len())
    }

    /// The ingress port's network, as of the batch's topology.
    pub fn network(&self) -> Option<NetworkId> {
        Some(self.topology.port(self.ingress)?.network)
    }
}

impl Drop for IngressBatch<'_> {
    fn drop(&mut self) {
        if let Some(port) = self.topology.port(self.ingress) {
            if self.rx_frames > 0 {
                port.counters.record_rx(self.rx_frames, self.rx_bytes);
            }
        }
    }
}
