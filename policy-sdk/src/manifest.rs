//! The module manifest: what a module declares about itself, stored in the `pol_manifest`
//! custom section. Modules encode it at compile time (`const fn`); the host decodes it.
//!
//! Encoding (little-endian): `b"POLM"`, `u32` ABI version, name and version strings (`u16`
//! length + UTF-8), `u32` hooks mask, `u32` capabilities, `u32` memory pages,
//! `u16` map count then per map a name and `u32` key size, value size, max entries, `u16`
//! counter count then per counter a name.

use crate::abi::ABI_VERSION;

const MAGIC: [u8; 4] = *b"POLM";

/// A host-owned map a module declares: fixed-size keys and values, bounded entries.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct MapSpec<'a> {
    /// Map name, unique in the module; maps are addressed by their index in the manifest.
    pub name: &'a str,
    /// Key size in bytes.
    pub key_size: u32,
    /// Value size in bytes.
    pub value_size: u32,
    /// Most entries the map holds.
    pub max_entries: u32,
}

/// What a module declares about itself.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Manifest<'a> {
    /// Module name (what counters and maps are keyed by across reloads).
    pub name: &'a str,
    /// Module version.
    pub version: &'a str,
    /// Bit `1 << hook` for each hook point the module wants.
    pub hooks: u32,
    /// Capabilities requested ([`crate::abi::cap`]).
    pub caps: u32,
    /// Linear memory the module needs, in 64 KiB pages (the host caps it with its own limit).
    pub memory_pages: u32,
    /// Host-owned maps.
    pub maps: &'a [MapSpec<'a>],
    /// Module counters, addressed by index with `counter_add`.
    pub counters: &'a [&'a str],
}

/// Why a manifest could not be decoded.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ManifestError {
    /// The section does not start with the magic bytes.
    BadMagic,
    /// The module was built for another ABI version.
    AbiVersion(u32),
    /// The section ends inside a field.
    Truncated,
    /// A string is not UTF-8.
    BadString,
    /// More maps or counters than the fixed-capacity decoder keeps.
    TooMany,
    /// Bytes follow the last field.
    TrailingBytes,
}

impl core::fmt::Display for ManifestError {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        match self {
            ManifestError::BadMagic => f.write_str("manifest does not start with POLM"),
            ManifestError::AbiVersion(v) => write!(f, "module uses policy ABI v{v}"),
            ManifestError::Truncated => f.write_str("manifest is truncated"),
            ManifestError::BadString => f.write_str("manifest string is not UTF-8"),
            ManifestError::TooMany => f.write_str("manifest declares too many maps or counters"),
            ManifestError::TrailingBytes => f.write_str("manifest has trailing bytes"),
        }
    }
}

impl core::error::Error for ManifestError {}

/// Most maps a decoded manifest keeps.
pub const MAX_MAPS: usize = 16;
/// Most counters a decoded manifest keeps.
pub const MAX_COUNTERS: usize = 64;

const fn str_len(s: &str) -> usize {
    2 + s.len()
}

/// Encoded size of `m`.
pub const fn encoded_len(m: &Manifest<'_>) -> usize {
    let mut n = 4 + 4 + str_len(m.name) + str_len(m.version) + 12 + 2;
    let mut i = 0;
    while i < m.maps.len() {
        n += str_len(m.maps[i].name) + 12;
        i += 1;
    }
    n += 2;
    let mut i = 0;
    while i < m.counters.len() {
        n += str_len(m.counters[i]);
        i += 1;
    }
    n
}

struct Writer<const N: usize> {
    buf: [u8; N],
    at: usize,
}

impl<const N: usize> Writer<N> {
    const fn bytes(mut self, b: &[u8]) -> Self {
        let mut i = 0;
        while i < b.len() {
            self.buf[self.at] = b[i];
            self.at += 1;
            i += 1;
        }
        self
    }
    const fn u16(self, v: u16) -> Self {
        self.bytes(&v.to_le_bytes())
    }
    const fn u32(self, v: u32) -> Self {
        self.bytes(&v.to_le_bytes())
    }
    const fn str(self, s: &str) -> Self {
        self.u16(s.len() as u16).bytes(s.as_bytes())
    }
}

/// Encodes `m` into exactly `N = encoded_len(m)` bytes (evaluated at compile time by the
/// export macro; a wrong `N` fails to compile).
pub const fn encode<const N: usize>(m: &Manifest<'_>) -> [u8; N] {
    assert!(N == encoded_len(m), "manifest buffer size");
    let mut w = Writer { buf: [0; N], at: 0 };
    w = w.bytes(&MAGIC).u32(ABI_VERSION).str(m.name).str(m.version);
    w = w.u32(m.hooks).u32(m.caps).u32(m.memory_pages);
    w = w.u16(m.maps.len() as u16);
    let mut i = 0;
    while i < m.maps.len() {
        let s = &m.maps[i];
        w = w
            .str(s.name)
            .u32(s.key_size)
            .u32(s.value_size)
            .u32(s.max_entries);
        i += 1;
    }
    w = w.u16(m.counters.len() as u16);
    let mut i = 0;
    while i < m.counters.len() {
        w = w.str(m.counters[i]);
        i += 1;
    }
    w.buf
}

struct Reader<'a> {
    b: &'a [u8],
}

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8], ManifestError> {
        if self.b.len() < n {
            return Err(ManifestError::Truncated);
        }
        let (head, rest) = self.b.split_at(n);
        self.b = rest;
        Ok(head)
    }
    fn u16(&mut self) -> Result<u16, ManifestError> {
        let b = self.take(2)?;
        Ok(u16::from_le_bytes([b[0], b[1]]))
    }
    fn u32(&mut self) -> Result<u32, ManifestError> {
        let b = self.take(4)?;
        Ok(u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
    }
    fn str(&mut self) -> Result<&'a str, ManifestError> {
        let n = self.u16()? as usize;
        core::str::from_utf8(self.take(n)?).map_err(|_| ManifestError::BadString)
    }
}

/// A decoded manifest, borrowing its strings from the section bytes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DecodedManifest<'a> {
    /// Module name.
    pub name: &'a str,
    /// Module version.
    pub version: &'a str,
    /// Hook mask.
    pub hooks: u32,
    /// Capabilities.
    pub caps: u32,
    /// Memory pages requested.
    pub memory_pages: u32,
    maps: [Option<MapSpec<'a>>; MAX_MAPS],
    counters: [&'a str; MAX_COUNTERS],
    counter_count: usize,
}

impl<'a> DecodedManifest<'a> {
    /// Decodes a `pol_manifest` section. Total: any byte sequence gives a value or an error.
    pub fn decode(bytes: &'a [u8]) -> Result<Self, ManifestError> {
        let mut r = Reader { b: bytes };
        if r.take(4)? != MAGIC {
            return Err(ManifestError::BadMagic);
        }
        let abi = r.u32()?;
        if abi != ABI_VERSION {
            return Err(ManifestError::AbiVersion(abi));
        }
        let name = r.str()?;
        let version = r.str()?;
        let (hooks, caps, memory_pages) = (r.u32()?, r.u32()?, r.u32()?);
        let mut maps = [None; MAX_MAPS];
        let n_maps = r.u16()? as usize;
        if n_maps > MAX_MAPS {
            return Err(ManifestError::TooMany);
        }
        for slot in maps.iter_mut().take(n_maps) {
            *slot = Some(MapSpec {
                name: r.str()?,
                key_size: r.u32()?,
                value_size: r.u32()?,
                max_entries: r.u32()?,
            });
        }
        let mut counters = [""; MAX_COUNTERS];
        let counter_count = r.u16()? as usize;
        if counter_count > MAX_COUNTERS {
            return Err(ManifestError::TooMany);
        }
        for slot in counters.iter_mut().take(counter_count) {
            *slot = r.str()?;
        }
        if !r.b.is_empty() {
            return Err(ManifestError::TrailingBytes);
        }
        Ok(DecodedManifest {
            name,
            version,
            hooks,
            caps,
            memory_pages,
            maps,
            counters,
            counter_count,
        })
    }

    /// Declared maps, in index order.
    pub fn maps(&self) -> impl Iterator<Item = MapSpec<'a>> + '_ {
        self.maps.iter().map_while(|m| *m)
    }

    /// Declared counters, in index order.
    pub fn counters(&self) -> &[&'a str] {
        &self.counters[..self.counter_count]
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const M: Manifest<'static> = Manifest {
        name: "test",
        version: "1.2.3",
        hooks: 0b11,
        caps: 1,
        memory_pages: 4,
        maps: &[MapSpec {
            name: "leases",
            key_size: 4,
            value_size: 4,
            max_entries: 256,
        }],
        counters: &["a", "bb"],
    };
    const LEN: usize = encoded_len(&M);
    static BYTES: [u8; LEN] = encode::<LEN>(&M);

    #[test]
    fn decode_reads_what_encode_wrote() {
        let d = DecodedManifest::decode(&BYTES).unwrap();
        assert_eq!(
            (d.name, d.version, d.hooks, d.caps),
            ("test", "1.2.3", 3, 1)
        );
        assert_eq!(d.memory_pages, 4);
        assert_eq!(d.maps().collect::<std::vec::Vec<_>>(), M.maps);
        assert_eq!(d.counters(), M.counters);
    }

    #[test]
    fn decode_is_total() {
        for cut in 0..BYTES.len() {
            assert!(DecodedManifest::decode(&BYTES[..cut]).is_err());
        }
        let mut bad = BYTES;
        bad[0] = b'X';
        assert_eq!(DecodedManifest::decode(&bad), Err(ManifestError::BadMagic));
        let mut long = std::vec::Vec::from(BYTES);
        long.push(0);
        assert_eq!(
            DecodedManifest::decode(&long),
            Err(ManifestError::TrailingBytes)
        );
    }
}
