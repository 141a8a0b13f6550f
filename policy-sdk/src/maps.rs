//! The semantics of a host-owned map (fixed key and value sizes, bounded entries), shared by
//! the policy host and the native test host so both answer a module alike.

use crate::abi::status;
use crate::manifest::MapSpec;
use std::boxed::Box;
use std::collections::HashMap;

/// One map's entries.
#[derive(Clone, Debug, Default)]
pub struct MapTable {
    key_size: usize,
    value_size: usize,
    max_entries: usize,
    entries: HashMap<Box<[u8]>, Box<[u8]>>,
}

impl MapTable {
    /// An empty map shaped as `spec` declares.
    pub fn new(spec: &MapSpec<'_>) -> Self {
        MapTable {
            key_size: spec.key_size as usize,
            value_size: spec.value_size as usize,
            max_entries: spec.max_entries as usize,
            entries: HashMap::new(),
        }
    }

    /// Whether this map has the shape `spec` declares (a reload keeps a map only then).
    pub fn has_shape(&self, spec: &MapSpec<'_>) -> bool {
        (self.key_size, self.value_size, self.max_entries)
            == (
                spec.key_size as usize,
                spec.value_size as usize,
                spec.max_entries as usize,
            )
    }

    /// Copies the value of `key` into `value`: [`status::OK`], `NOT_FOUND` or `INVALID`.
    pub fn lookup(&self, key: &[u8], value: &mut [u8]) -> i32 {
        if key.len() != self.key_size || value.len() != self.value_size {
            return status::INVALID;
        }
        match self.entries.get(key) {
            Some(v) => {
                value.copy_from_slice(v);
                status::OK
            }
            None => status::NOT_FOUND,
        }
    }

    /// Inserts or replaces `key`: `OK`, `FULL` or `INVALID`.
    pub fn update(&mut self, key: &[u8], value: &[u8]) -> i32 {
        if key.len() != self.key_size || value.len() != self.value_size {
            return status::INVALID;
        }
        if let Some(v) = self.entries.get_mut(key) {
            v.copy_from_slice(value);
            return status::OK;
        }
        if self.entries.len() >= self.max_entries {
            return status::FULL;
        }
        self.entries.insert(key.into(), value.into());
        status::OK
    }

    /// Removes `key`: `OK`, `NOT_FOUND` or `INVALID`.
    pub fn delete(&mut self, key: &[u8]) -> i32 {
        if key.len() != self.key_size {
            return status::INVALID;
        }
        match self.entries.remove(key) {
            Some(_) => status::OK,
            None => status::NOT_FOUND,
        }
    }

    /// Number of entries.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// Whether the map is empty.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bounded_fixed_size_entries() {
        let spec = MapSpec {
            name: "m",
            key_size: 2,
            value_size: 1,
            max_entries: 1,
        };
        let mut m = MapTable::new(&spec);
        let mut v = [0u8; 1];
        assert_eq!(m.lookup(&[1, 2], &mut v), status::NOT_FOUND);
        assert_eq!(m.update(&[1, 2], &[7]), status::OK);
        assert_eq!(
            m.update(&[1, 2], &[8]),
            status::OK,
            "replacing needs no room"
        );
        assert_eq!(m.update(&[3, 4], &[9]), status::FULL);
        assert_eq!(m.update(&[3], &[9]), status::INVALID);
        assert_eq!(m.lookup(&[1, 2], &mut v), status::OK);
        assert_eq!(v, [8]);
        assert_eq!(m.delete(&[1, 2]), status::OK);
        assert_eq!(m.delete(&[1, 2]), status::NOT_FOUND);
        assert!(m.is_empty() && m.has_shape(&spec));
    }
}
