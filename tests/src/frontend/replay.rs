//! The message sequences of the three vhost-user-net frontends the project serves, as
//! ../shared/design/frontends.md records them from their sources and from a message logger:
//!
//! | step | QEMU | cloud-hypervisor | DPDK virtio-user |
//! |---|---|---|---|
//! | connect | per pair: GET_FEATURES, GET/SET_PROTOCOL_FEATURES, (pair 0) GET_QUEUE_NUM, GET_MAX_MEM_SLOTS, (pair 0) SET_OWNER, GET_FEATURES, CALL/ERR per ring | SET_OWNER, GET_FEATURES, GET/SET_PROTOCOL_FEATURES, GET_QUEUE_NUM, GET_CONFIG | SET_OWNER, GET_FEATURES, GET/SET_PROTOCOL_FEATURES |
//! | start | ENABLE per ring (before SET_FEATURES), per pair SET_FEATURES, (pair 0) ADD_MEM_REG per region or SET_MEM_TABLE, per ring NUM, BASE, ADDR, KICK, CALL; ENABLE again | SET_FEATURES, SET_MEM_TABLE, NUM for all, per ring ADDR, BASE = avail idx, CALL, KICK; ENABLE all | CALL per ring, SET_FEATURES, SET_MEM_TABLE, per ring NUM, BASE = 0, ADDR, KICK; ENABLE pair 0 |
//! | stop | GET_VRING_BASE per started ring | per ring ENABLE 0, GET_VRING_BASE | ENABLE 0 all, GET_VRING_BASE all |
//! | reconnect | connect and start again, BASE = used idx | SET_OWNER, GET_FEATURES, SET_PROTOCOL_FEATURES (no GET), start | ENABLE 0 and GET_VRING_BASE all, GET_FEATURES, GET/SET_PROTOCOL_FEATURES (no SET_OWNER), start |
//! | REPLY_ACK | memory updates | every message | memory updates |
//!
//! Features a frontend never acks to a backend are hidden: QEMU and DPDK run the control queue
//! themselves (MAC, STATUS, CTRL_*), DPDK never negotiates EVENT_IDX. Queue pairs beyond the
//! first are enabled after start ([`VirtioNet::set_active_pairs`]), as the guest's MQ command
//! makes QEMU and DPDK do.

use vhost::vhost_user::message::VhostUserProtocolFeatures;

use super::connection::{Connection, NeedReply};
use super::features;
use super::net::{
    queue_err, Negotiated, NetConfig, NetError, NetOptions, Notifiers, VirtioNet, CONFIG_LEN,
};

/// Whose message sequences the harness replays.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FrontendKind {
    /// QEMU's `-netdev vhost-user` (hw/virtio/vhost-user.c, hw/net/vhost_net.c).
    Qemu,
    /// cloud-hypervisor's `--net vhost_user=true`.
    CloudHypervisor,
    /// DPDK's virtio-user PMD.
    Dpdk,
}

impl FrontendKind {
    /// Protocol features this frontend acks when offered (restricted to what the harness
    /// drives: QEMU strips CONFIG for virtio-net; DPDK asks for MQ and REPLY_ACK).
    pub fn protocol_features(self) -> VhostUserProtocolFeatures {
        use VhostUserProtocolFeatures as P;
        match self {
            FrontendKind::Qemu => P::MQ | P::REPLY_ACK | P::CONFIGURE_MEM_SLOTS,
            FrontendKind::CloudHypervisor => {
                P::MQ | P::REPLY_ACK | P::CONFIG | P::CONFIGURE_MEM_SLOTS
            }
            FrontendKind::Dpdk => P::MQ | P::REPLY_ACK,
        }
    }

    /// Virtio features this frontend never acks to a backend.
    pub fn hidden_features(self) -> u64 {
        match self {
            FrontendKind::Qemu => features::VMM_CONTROL | features::MAC | features::STATUS,
            FrontendKind::CloudHypervisor => 0,
            FrontendKind::Dpdk => {
                features::VMM_CONTROL | features::MAC | features::STATUS | features::EVENT_IDX
            }
        }
    }

    fn need_reply(self) -> NeedReply {
        match self {
            FrontendKind::CloudHypervisor => NeedReply::Always,
            FrontendKind::Qemu | FrontendKind::Dpdk => NeedReply::MemoryUpdates,
        }
    }

    /// Queue pairs enabled by the start sequence itself.
    pub(super) fn pairs_enabled_at_start(self, pairs: u16) -> u16 {
        match self {
            FrontendKind::CloudHypervisor => pairs,
            FrontendKind::Qemu | FrontendKind::Dpdk => 1,
        }
    }
}

/// The connect-time part of the sequence. `previous` is what the last connection settled
/// when this is a reconnect; the guest's acked features stay as they were then.
pub(super) fn handshake(
    conn: &mut Connection,
    options: &NetOptions,
    notifiers: &[Notifiers],
    previous: Option<&Negotiated>,
) -> Result<Negotiated, NetError> {
    let kind = options.frontend;
    conn.set_need_reply(kind.need_reply());
    let wanted = options
        .protocol_features
        .unwrap_or_else(|| kind.protocol_features());
    let mut n = Negotiated::default();
    let protocol = |conn: &mut Connection, n: &mut Negotiated| -> Result<(), NetError> {
        if n.offered & features::PROTOCOL_FEATURES != 0 {
            n.protocol_offered = conn.get_protocol_features()?;
            n.protocol = n.protocol_offered & wanted;
            conn.set_protocol_features(n.protocol)?;
        }
        Ok(())
    };
    match (kind, previous) {
        (FrontendKind::Qemu, _) => {
            for pair in 0..notifiers.len() / 2 {
                n.offered = conn.get_features()?;
                protocol(conn, &mut n)?;
                if pair == 0 && n.protocol.contains(VhostUserProtocolFeatures::MQ) {
                    n.queue_num = Some(conn.get_queue_num()?);
                }
                if n.protocol
                    .contains(VhostUserProtocolFeatures::CONFIGURE_MEM_SLOTS)
                {
                    n.max_mem_slots = Some(conn.get_max_mem_slots()?);
                }
                if pair == 0 {
                    conn.set_owner()?;
                }
                n.offered = conn.get_features()?;
                for (ring, notifier) in notifiers.iter().enumerate().skip(2 * pair).take(2) {
                    conn.set_vring_call(ring, &notifier.call)?;
                    conn.set_vring_err(ring, &notifier.err)?;
                }
            }
        }
        (FrontendKind::CloudHypervisor, None) => {
            conn.set_owner()?;
            n.offered = conn.get_features()?;
            protocol(conn, &mut n)?;
            if n.protocol.contains(VhostUserProtocolFeatures::MQ) {
                n.queue_num = Some(conn.get_queue_num()?);
            }
            if n.protocol.contains(VhostUserProtocolFeatures::CONFIG) {
                n.config = NetConfig::parse(&conn.get_config(0, CONFIG_LEN)?);
            }
        }
        (FrontendKind::CloudHypervisor, Some(prev)) => {
            conn.set_owner()?;
            n.offered = conn.get_features()?;
            n.protocol_offered = prev.protocol_offered;
            n.protocol = prev.protocol;
            n.queue_num = prev.queue_num;
            n.config = prev.config;
            if n.offered & features::PROTOCOL_FEATURES != 0 {
                conn.set_protocol_features(n.protocol)?;
            }
        }
        (FrontendKind::Dpdk, prev) => {
            if prev.is_some() {
                for ring in 0..notifiers.len() {
                    conn.set_vring_enable(ring, false)?;
                }
                for ring in 0..notifiers.len() {
                    conn.get_vring_base(ring)?;
                }
            } else {
                conn.set_owner()?;
            }
            n.offered = conn.get_features()?;
            protocol(conn, &mut n)?;
        }
    }
    if notifiers.len() > 2 && !n.protocol.contains(VhostUserProtocolFeatures::MQ) {
        // Without the MQ protocol feature every frontend stops at one queue pair.
        return Err(NetError::QueueNum {
            backend: 2,
            needed: notifiers.len(),
        });
    }
    n.acked = match previous {
        Some(prev) => prev.acked,
        None => {
            let protocol_bit = n.offered & features::PROTOCOL_FEATURES;
            (n.offered & options.features & !kind.hidden_features()) | protocol_bit
        }
    };
    let missing = n.acked & !n.offered;
    if missing != 0 {
        return Err(NetError::FeaturesLost { missing });
    }
    if n.config.is_none() {
        n.config = previous.and_then(|p| p.config);
    }
    Ok(n)
}

/// The start sequence: features, memory, rings, enables.
pub(super) fn activate(net: &mut VirtioNet) -> Result<(), NetError> {
    let kind = net.options.frontend;
    let rings = net.vrings.len();
    let acked = net.negotiated.acked;
    let active = net.active_pairs;
    match kind {
        FrontendKind::Qemu => {
            // virtio-net's peer_attach/peer_detach at FEATURES_OK, before vhost starts.
            for ring in 0..rings {
                let enable = ring / 2 < usize::from(active);
                net.conn.set_vring_enable(ring, enable)?;
                net.vrings[ring].enabled = enable;
            }
            for pair in 0..rings / 2 {
                net.conn.set_features(acked)?;
                if pair == 0 {
                    send_memory(net)?;
                }
                for ring in 2 * pair..2 * pair + 2 {
                    let base = net.vrings[ring].saved_base;
                    net.conn.set_vring_num(ring, net.options.queue_size)?;
                    net.conn.set_vring_base(ring, base)?;
                    let config = net.vring_config(ring)?;
                    net.conn.set_vring_addr(ring, &config)?;
                    net.conn.set_vring_kick(ring, &net.notifiers[ring].kick)?;
                    net.conn.set_vring_call(ring, &net.notifiers[ring].call)?;
                    net.vrings[ring].started = true;
                }
            }
            // vhost_net_start restores the enable state once the rings run.
            for ring in 0..2 * usize::from(active) {
                net.conn.set_vring_enable(ring, true)?;
            }
        }
        FrontendKind::CloudHypervisor => {
            net.conn.set_features(acked)?;
            let regions = net.mem.regions()?;
            net.conn.set_mem_table(&regions)?;
            for ring in 0..rings {
                net.conn.set_vring_num(ring, net.options.queue_size)?;
            }
            for ring in 0..rings {
                let config = net.vring_config(ring)?;
                net.conn.set_vring_addr(ring, &config)?;
                let base = net.vrings[ring].ring.avail_idx();
                net.conn.set_vring_base(ring, base)?;
                net.conn.set_vring_call(ring, &net.notifiers[ring].call)?;
                net.conn.set_vring_kick(ring, &net.notifiers[ring].kick)?;
                net.vrings[ring].started = true;
            }
            for ring in 0..rings {
                net.conn.set_vring_enable(ring, true)?;
                net.vrings[ring].enabled = true;
            }
        }
        FrontendKind::Dpdk => {
            for ring in 0..rings {
                net.conn.set_vring_call(ring, &net.notifiers[ring].call)?;
            }
            net.conn.set_features(acked)?;
            let regions = net.mem.regions()?;
            net.conn.set_mem_table(&regions)?;
            for ring in 0..rings {
                net.conn.set_vring_num(ring, net.options.queue_size)?;
                net.conn.set_vring_base(ring, 0)?;
                let config = net.vring_config(ring)?;
                net.conn.set_vring_addr(ring, &config)?;
                net.conn.set_vring_kick(ring, &net.notifiers[ring].kick)?;
                net.vrings[ring].started = true;
            }
            for ring in 0..2 {
                net.conn.set_vring_enable(ring, true)?;
                net.vrings[ring].enabled = true;
            }
            if active > 1 {
                net.set_active_pairs(active)?;
            }
        }
    }
    Ok(())
}

/// QEMU's memory update: ADD_MEM_REG per region the backend has not seen on this connection
/// when memory slots were negotiated, else the whole SET_MEM_TABLE.
fn send_memory(net: &mut VirtioNet) -> Result<(), NetError> {
    let regions = net.mem.regions()?;
    match net.negotiated.max_mem_slots {
        Some(slots) => {
            if regions.len() as u64 > slots {
                return Err(NetError::MemSlots {
                    slots,
                    regions: regions.len(),
                });
            }
            if !net.mem_table_sent {
                for region in &regions {
                    net.conn.add_mem_region(region)?;
                }
            }
        }
        None => net.conn.set_mem_table(&regions)?,
    }
    net.mem_table_sent = true;
    Ok(())
}

impl VirtioNet {
    /// Stops the rings the way the frontend kind does at device stop or reset (QEMU keeps the
    /// bases GET_VRING_BASE returns for the next start).
    pub fn stop(&mut self) -> Result<(), NetError> {
        let rings = self.vrings.len();
        match self.options.frontend {
            FrontendKind::Qemu => {
                for ring in 0..rings {
                    if self.vrings[ring].started {
                        self.vrings[ring].saved_base = self.conn.get_vring_base(ring)?;
                    }
                }
            }
            FrontendKind::CloudHypervisor => {
                for ring in 0..rings {
                    self.conn.set_vring_enable(ring, false)?;
                    self.vrings[ring].enabled = false;
                    self.conn.get_vring_base(ring)?;
                }
            }
            FrontendKind::Dpdk => {
                for ring in 0..rings {
                    self.conn.set_vring_enable(ring, false)?;
                    self.vrings[ring].enabled = false;
                }
                for ring in 0..rings {
                    self.conn.get_vring_base(ring)?;
                }
            }
        }
        for vring in &mut self.vrings {
            vring.started = false;
        }
        Ok(())
    }

    /// Starts the rings again after [`VirtioNet::stop`].
    pub fn restart(&mut self) -> Result<(), NetError> {
        self.start()
    }

    /// A guest reboot or driver reload: stop, zero the rings, start from index 0 and post
    /// receive buffers again.
    pub fn reset(&mut self) -> Result<(), NetError> {
        self.stop()?;
        for (index, vring) in self.vrings.iter_mut().enumerate() {
            vring.ring.reset().map_err(queue_err(index))?;
            vring.hostile.fill(false);
            vring.hostile_in_flight = 0;
            vring.saved_base = 0;
        }
        self.start()
    }

    /// Connects (or accepts) again after the backend went away, and replays the frontend
    /// kind's reconnect: QEMU restarts every ring at its used index, cloud-hypervisor at the
    /// available index, DPDK at 0. Guest memory, rings and posted buffers are kept.
    pub fn reconnect(&mut self) -> Result<(), NetError> {
        self.disconnect();
        let stream = self.endpoint.open(self.options.timeout)?;
        self.conn = Connection::new(stream, self.vrings.len(), self.options.timeout)?;
        self.mem_table_sent = false;
        let previous = self.negotiated.clone();
        self.negotiated = handshake(
            &mut self.conn,
            &self.options,
            &self.notifiers,
            Some(&previous),
        )?;
        if self.options.frontend == FrontendKind::Qemu {
            for (index, vring) in self.vrings.iter_mut().enumerate() {
                vring.saved_base = vring.ring.used_idx().map_err(queue_err(index))?;
            }
        }
        self.start()
    }

    /// Enables the first `pairs` queue pairs and disables the others, as QEMU and DPDK do when
    /// the guest's driver sets the number of queue pairs; then waits until the backend handled
    /// it ([`Connection::barrier`](super::connection::Connection::barrier)).
    pub fn set_active_pairs(&mut self, pairs: u16) -> Result<(), NetError> {
        if pairs == 0 || pairs > self.options.queue_pairs {
            return Err(NetError::NoSuchPair(pairs));
        }
        for ring in 0..self.vrings.len() {
            let enable = ring / 2 < usize::from(pairs);
            self.conn.set_vring_enable(ring, enable)?;
            self.vrings[ring].enabled = enable;
        }
        self.active_pairs = pairs;
        Ok(self.conn.barrier()?)
    }

    /// Reads the config space with GET_CONFIG (needs the CONFIG protocol feature acked).
    pub fn read_config(&mut self) -> Result<Option<NetConfig>, NetError> {
        let config = NetConfig::parse(&self.conn.get_config(0, CONFIG_LEN)?);
        self.negotiated.config = config;
        Ok(config)
    }
}
