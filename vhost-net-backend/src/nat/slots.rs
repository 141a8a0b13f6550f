//! A bounded table of entries addressed by small indices (a socket's watch token carries its
//! index), reused after removal.

/// At most `capacity` entries, each at a stable index until removed.
#[derive(Debug)]
pub struct Slots<T> {
    entries: Vec<Option<T>>,
    free: Vec<usize>,
    len: usize,
    capacity: usize,
}

impl<T> Slots<T> {
    /// An empty table for up to `capacity` entries.
    pub fn new(capacity: usize) -> Self {
        Slots {
            entries: Vec::new(),
            free: Vec::new(),
            len: 0,
            capacity,
        }
    }

    /// Number of entries.
    pub fn len(&self) -> usize {
        self.len
    }

    /// Whether there are no entries.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Whether the table is at its bound.
    pub fn is_full(&self) -> bool {
        self.len >= self.capacity
    }

    /// Adds `value` and returns its index; gives it back when the table is full.
    pub fn insert(&mut self, value: T) -> Result<usize, T> {
        if self.is_full() {
            return Err(value);
        }
        self.len += 1;
        if let Some(i) = self.free.pop() {
            self.entries[i] = Some(value);
            return Ok(i);
        }
        self.entries.push(Some(value));
        Ok(self.entries.len() - 1)
    }

    /// The entry at `index`.
    pub fn get(&self, index: usize) -> Option<&T> {
        self.entries.get(index)?.as_ref()
    }

    /// The entry at `index`, to change.
    pub fn get_mut(&mut self, index: usize) -> Option<&mut T> {
        self.entries.get_mut(index)?.as_mut()
    }

    /// Removes and returns the entry at `index`.
    pub fn remove(&mut self, index: usize) -> Option<T> {
        let value = self.entries.get_mut(index)?.take()?;
        self.free.push(index);
        self.len -= 1;
        Some(value)
    }

    /// The entries with their indices.
    pub fn iter(&self) -> impl Iterator<Item = (usize, &T)> {
        self.entries
            .iter()
            .enumerate()
            .filter_map(|(i, e)| Some((i, e.as_ref()?)))
    }

    /// The entries with their indices, to change.
    pub fn iter_mut(&mut self) -> impl Iterator<Item = (usize, &mut T)> {
        self.entries
            .iter_mut()
            .enumerate()
            .filter_map(|(i, e)| Some((i, e.as_mut()?)))
    }

    /// The index of the entry with the smallest `key`.
    pub fn oldest_by<K: Ord>(&self, key: impl Fn(&T) -> K) -> Option<usize> {
        self.iter().min_by_key(|(_, e)| key(e)).map(|(i, _)| i)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bounded_with_stable_reused_indices() {
        let mut s = Slots::new(2);
        assert_eq!(s.insert("a"), Ok(0));
        assert_eq!(s.insert("b"), Ok(1));
        assert_eq!(s.insert("c"), Err("c"));
        assert_eq!(s.remove(0), Some("a"));
        assert_eq!(s.remove(0), None);
        assert_eq!(s.insert("d"), Ok(0));
        assert_eq!(s.get(1), Some(&"b"));
        assert_eq!(s.len(), 2);
        assert_eq!(s.oldest_by(|e| *e), Some(1));
        let all: Vec<_> = s.iter().collect();
        assert_eq!(all, [(0, &"d"), (1, &"b")]);
    }
}
