//! IEEE 802.1Q VLAN tags: the tag view, VLAN ids and VLAN sets.
//!
//! The view covers the four bytes that follow an outer EtherType of `0x8100` (the TPID): the tag
//! control information (PCP, DEI, VID) and the encapsulated EtherType, in the style of
//! `smoltcp::wire` (`Packet::new_checked`, `Repr::parse/emit/buffer_len`).

use core::fmt;

use smoltcp::wire::EthernetProtocol;

/// The EtherType (TPID) that announces an 802.1Q tag.
pub const TPID: u16 = 0x8100;

/// Length of the tag after the TPID: TCI and encapsulated EtherType.
pub const HEADER_LEN: usize = field::PAYLOAD.start;

mod field {
    pub type Field = core::ops::Range<usize>;
    pub type Rest = core::ops::RangeFrom<usize>;

    pub const TCI: Field = 0..2;
    pub const ETHERTYPE: Field = 2..4;
    pub const PAYLOAD: Rest = 4..;
}

/// Errors of the 802.1Q view.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum Error {
    /// The buffer is shorter than the tag.
    #[error("802.1Q tag truncated")]
    Truncated,
}

/// Tag control information: priority (PCP), drop eligibility (DEI) and VLAN id (VID).
///
/// Any 16-bit value is a valid TCI; VID 0 means "priority tag, no VLAN".
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub struct Tci(pub u16);

impl Tci {
    /// Builds a TCI; `pcp` is masked to 3 bits and `vid` to 12 bits.
    pub const fn new(pcp: u8, dei: bool, vid: u16) -> Tci {
        Tci(((pcp as u16 & 0x7) << 13) | ((dei as u16) << 12) | (vid & 0x0fff))
    }

    /// Priority code point (0..=7).
    pub const fn pcp(self) -> u8 {
        (self.0 >> 13) as u8
    }

    /// Drop eligible indicator.
    pub const fn dei(self) -> bool {
        self.0 & 0x1000 != 0
    }

    /// VLAN identifier (0..=4095; 0 is a priority tag, 4095 is reserved).
    pub const fn vid(self) -> u16 {
        self.0 & 0x0fff
    }

    /// The same priority and DEI with another VLAN id.
    pub const fn with_vid(self, vid: VlanId) -> Tci {
        Tci((self.0 & 0xf000) | vid.get())
    }
}

impl fmt::Display for Tci {
    fn fmt(&self, f: &mut fmt::Formatter) -> fmt::Result {
        write!(f, "vid {} pcp {}", self.vid(), self.pcp())?;
        if self.dei() {
            f.write_str(" dei")?;
        }
        Ok(())
    }
}

/// A VLAN id that names a VLAN: 1..=4094.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct VlanId(u16);

impl VlanId {
    /// VLAN 1, the conventional default PVID.
    pub const DEFAULT: VlanId = VlanId(1);
    /// The largest usable VLAN id.
    pub const MAX: u16 = 4094;

    /// Returns the VLAN id, or `None` for 0 (priority tag) and 4095..
    pub const fn new(vid: u16) -> Option<VlanId> {
        if vid >= 1 && vid <= Self::MAX {
            Some(VlanId(vid))
        } else {
            None
        }
    }

    /// The numeric id.
    pub const fn get(self) -> u16 {
        self.0
    }
}

impl fmt::Display for VlanId {
    fn fmt(&self, f: &mut fmt::Formatter) -> fmt::Result {
        self.0.fmt(f)
    }
}

/// A set of VLAN ids (a 4096-bit bitmap on the heap).
#[derive(Clone, PartialEq, Eq)]
pub struct VlanSet(Box<[u64; 64]>);

impl VlanSet {
    /// The empty set.
    pub fn new() -> VlanSet {
        VlanSet(Box::new([0; 64]))
    }

    /// Adds a VLAN.
    pub fn insert(&mut self, vlan: VlanId) {
        let v = usize::from(vlan.get());
        self.0[v / 64] |= 1 << (v % 64);
    }

    /// Removes a VLAN.
    pub fn remove(&mut self, vlan: VlanId) {
        let v = usize::from(vlan.get());
        self.0[v / 64] &= !(1 << (v % 64));
    }

    /// Whether the VLAN is in the set.
    pub fn contains(&self, vlan: VlanId) -> bool {
        let v = usize::from(vlan.get());
        self.0[v / 64] & (1 << (v % 64)) != 0
    }

    /// The VLANs in ascending order.
    pub fn iter(&self) -> impl Iterator<Item = VlanId> + '_ {
        (1..=VlanId::MAX)
            .filter_map(VlanId::new)
            .filter(|v| self.contains(*v))
    }
}

impl Default for VlanSet {
    fn default() -> Self {
        VlanSet::new()
    }
}

impl FromIterator<VlanId> for VlanSet {
    fn from_iter<I: IntoIterator<Item = VlanId>>(iter: I) -> Self {
        let mut set = VlanSet::new();
        for v in iter {
            set.insert(v);
        }
        set
    }
}

impl fmt::Debug for VlanSet {
    fn fmt(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.debug_set().entries(self.iter().map(VlanId::get)).finish()
    }
}

/// A read/write view of an 802.1Q tag (the bytes after the TPID).
#[derive(Debug, Clone)]
pub struct Packet<T: AsRef<[u8]>> {
    buffer: T,
}

impl<T: AsRef<[u8]>> Packet<T> {
    /// Wraps a buffer without checking its length.
    pub const fn new_unchecked(buffer: T) -> Packet<T> {
        Packet { buffer }
    }

    /// Wraps a buffer after checking that every accessor can be called.
    pub fn new_checked(buffer: T) -> Result<Packet<T>, Error> {
        let packet = Self::new_unchecked(buffer);
        packet.check_len()?;
        Ok(packet)
    }

    /// Checks that the buffer holds a whole tag.
    pub fn check_len(&self) -> Result<(), Error> {
        if self.buffer.as_ref().len() < HEADER_LEN {
            Err(Error::Truncated)
        } else {
            Ok(())
        }
    }

    /// Returns the underlying buffer.
    pub fn into_inner(self) -> T {
        self.buffer
    }

    /// The tag control information.
    pub fn tci(&self) -> Tci {
        let b = &self.buffer.as_ref()[field::TCI];
        Tci(u16::from_be_bytes([b[0], b[1]]))
    }

    /// The encapsulated EtherType.
    pub fn ethertype(&self) -> EthernetProtocol {
        let b = &self.buffer.as_ref()[field::ETHERTYPE];
        EthernetProtocol::from(u16::from_be_bytes([b[0], b[1]]))
    }
}

impl<'a, T: AsRef<[u8]> + ?Sized> Packet<&'a T> {
    /// The bytes after the tag.
    pub fn payload(&self) -> &'a [u8] {
        &self.buffer.as_ref()[field::PAYLOAD]
    }
}

impl<T: AsRef<[u8]> + AsMut<[u8]>> Packet<T> {
    /// Sets the tag control information.
    pub fn set_tci(&mut self, tci: Tci) {
        self.buffer.as_mut()[field::TCI].copy_from_slice(&tci.0.to_be_bytes());
    }

    /// Sets the encapsulated EtherType.
    pub fn set_ethertype(&mut self, ethertype: EthernetProtocol) {
        self.buffer.as_mut()[field::ETHERTYPE].copy_from_slice(&u16::from(ethertype).to_be_bytes());
    }

    /// The bytes after the tag, mutably.
    pub fn payload_mut(&mut self) -> &mut [u8] {
        &mut self.buffer.as_mut()[field::PAYLOAD]
    }
}

/// A high-level representation of an 802.1Q tag.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Repr {
    /// Tag control information.
    pub tci: Tci,
    /// The EtherType of the payload.
    pub ethertype: EthernetProtocol,
}

impl Repr {
    /// Parses a tag view (every TCI value is accepted).
    pub fn parse<T: AsRef<[u8]> + ?Sized>(packet: &Packet<&T>) -> Result<Repr, Error> {
        packet.check_len()?;
        Ok(Repr {
            tci: packet.tci(),
            ethertype: packet.ethertype(),
        })
    }

    /// The length of the emitted tag.
    pub const fn buffer_len(&self) -> usize {
        HEADER_LEN
    }

    /// Writes the tag into a view whose buffer is at least [`Repr::buffer_len`] long.
    pub fn emit<T: AsRef<[u8]> + AsMut<[u8]>>(&self, packet: &mut Packet<T>) {
        packet.set_tci(self.tci);
        packet.set_ethertype(self.ethertype);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    // PCP 5, DEI set, VID 100, carrying IPv4, followed by one payload byte.
    const TAG: [u8; 5] = [0xb0, 0x64, 0x08, 0x00, 0xaa];

    #[test]
    fn parses_fixture() {
        let packet = Packet::new_checked(&TAG[..]).unwrap();
        let repr = Repr::parse(&packet).unwrap();
        assert_eq!(repr.tci.pcp(), 5);
        assert!(repr.tci.dei());
        assert_eq!(repr.tci.vid(), 100);
        assert_eq!(repr.ethertype, EthernetProtocol::Ipv4);
        assert_eq!(packet.payload(), &[0xaa]);
    }

    #[test]
    fn emits_fixture() {
        let repr = Repr {
            tci: Tci::new(5, true, 100),
            ethertype: EthernetProtocol::Ipv4,
        };
        let mut buf = [0u8; 5];
        buf[4] = 0xaa;
        repr.emit(&mut Packet::new_unchecked(&mut buf[..]));
        assert_eq!(buf, TAG);
        assert_eq!(repr.buffer_len(), 4);
    }

    #[test]
    fn rejects_truncated_tag() {
        for len in 0..HEADER_LEN {
            assert_eq!(
                Packet::new_checked(&TAG[..len]).unwrap_err(),
                Error::Truncated
            );
        }
    }

    #[test]
    fn tci_fields_and_retag() {
        let tci = Tci::new(9, false, 0x1fff);
        assert_eq!((tci.pcp(), tci.dei(), tci.vid()), (1, false, 0x0fff));
        let moved = Tci::new(3, true, 0).with_vid(VlanId::new(42).unwrap());
        assert_eq!((moved.pcp(), moved.dei(), moved.vid()), (3, true, 42));
    }

    #[test]
    fn vlan_ids_and_sets() {
        assert_eq!(VlanId::new(0), None);
        assert_eq!(VlanId::new(4095), None);
        assert_eq!(VlanId::new(4094).map(VlanId::get), Some(4094));
        let set: VlanSet = [1, 100, 4094].into_iter().filter_map(VlanId::new).collect();
        assert!(set.contains(VlanId::new(100).unwrap()));
        assert!(!set.contains(VlanId::new(101).unwrap()));
        assert_eq!(
            set.iter().map(VlanId::get).collect::<Vec<_>>(),
            [1, 100, 4094]
        );
        let mut set = set;
        set.remove(VlanId::new(100).unwrap());
        assert_eq!(format!("{set:?}"), "{1, 4094}");
    }
}
