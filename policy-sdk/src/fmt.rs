//! Formatting into a fixed buffer, for log messages without allocation.

/// A `core::fmt::Write` into a byte buffer that cuts what does not fit (on a char boundary).
#[derive(Debug)]
pub struct BufWriter<'a> {
    buf: &'a mut [u8],
    len: usize,
}

impl<'a> BufWriter<'a> {
    /// An empty writer over `buf`.
    pub fn new(buf: &'a mut [u8]) -> Self {
        BufWriter { buf, len: 0 }
    }

    /// What has been written.
    pub fn as_str(&self) -> &str {
        // Only whole chars are ever copied in, so this cannot fail; fall back to "" anyway.
        core::str::from_utf8(&self.buf[..self.len]).unwrap_or("")
    }
}

impl core::fmt::Write for BufWriter<'_> {
    fn write_str(&mut self, s: &str) -> core::fmt::Result {
        let room = self.buf.len() - self.len;
        let mut take = s.len().min(room);
        while !s.is_char_boundary(take) {
            take -= 1;
        }
        self.buf[self.len..self.len + take].copy_from_slice(&s.as_bytes()[..take]);
        self.len += take;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use core::fmt::Write;

    #[test]
    fn cuts_on_char_boundaries() {
        let mut buf = [0u8; 5];
        let mut w = BufWriter::new(&mut buf);
        let s = "\u{e9}\u{e9}";
        write!(w, "ab{s}").unwrap();
        assert_eq!(w.as_str(), "abé");
    }
}
