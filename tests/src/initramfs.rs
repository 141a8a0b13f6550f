//! A second initramfs archive for a test guest: a `newc` cpio archive holding `/test.sh`,
//! appended to the guest image's `initrd.gz` (the kernel unpacks concatenated archives).

use std::fs;
use std::io;
use std::path::Path;

/// Errors writing a test initramfs.
#[derive(Debug, thiserror::Error)]
pub enum InitramfsError {
    #[error("reading the base initramfs {path}")]
    ReadBase {
        path: String,
        #[source]
        source: io::Error,
    },
    #[error("writing the test initramfs {path}")]
    Write {
        path: String,
        #[source]
        source: io::Error,
    },
}

/// Mode of an executable regular file.
const EXECUTABLE: u32 = 0o100_755;

/// Writes `base` followed by an archive holding `/test.sh` (executable, content `script`) to
/// `out`.
pub fn write_with_script(base: &Path, script: &str, out: &Path) -> Result<(), InitramfsError> {
    let mut image = fs::read(base).map_err(|source| InitramfsError::ReadBase {
        path: base.display().to_string(),
        source,
    })?;
    // The kernel looks for the next archive at a 4-byte boundary and skips zero bytes.
    pad4(&mut image);
    image.extend_from_slice(&newc_archive(&[("test.sh", EXECUTABLE, script.as_bytes())]));
    fs::write(out, image).map_err(|source| InitramfsError::Write {
        path: out.display().to_string(),
        source,
    })
}

/// A `newc` cpio archive of regular files `(name, mode, content)`, with its trailer.
fn newc_archive(files: &[(&str, u32, &[u8])]) -> Vec<u8> {
    let mut archive = Vec::new();
    for (ino, (name, mode, content)) in files.iter().enumerate() {
        append_entry(&mut archive, ino + 1, name, *mode, content);
    }
    append_entry(&mut archive, 0, "TRAILER!!!", 0, &[]);
    archive
}

fn append_entry(archive: &mut Vec<u8>, ino: usize, name: &str, mode: u32, content: &[u8]) {
    let nlink = 1;
    let fields = [
        ino,
        mode as usize,
        0, // uid
        0, // gid
        nlink,
        0, // mtime
        content.len(),
        0, // devmajor
        0, // devminor
        0, // rdevmajor
        0, // rdevminor
        name.len() + 1,
        0, // check
    ];
    archive.extend_from_slice(b"070701");
    for field in fields {
        archive.extend_from_slice(format!("{field:08x}").as_bytes());
    }
    archive.extend_from_slice(name.as_bytes());
    archive.push(0);
    pad4(archive);
    archive.extend_from_slice(content);
    pad4(archive);
}

fn pad4(bytes: &mut Vec<u8>) {
    bytes.resize(bytes.len().next_multiple_of(4), 0);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn newc_entry_layout() {
        let archive = newc_archive(&[("test.sh", EXECUTABLE, b"echo hi\n")]);
        let header = std::str::from_utf8(&archive[..110]).unwrap();
        assert_eq!(&header[..6], "070701");
        assert_eq!(&header[6..14], "00000001", "inode");
        assert_eq!(&header[14..22], "000081ed", "mode");
        assert_eq!(&header[54..62], "00000008", "file size");
        assert_eq!(&header[94..102], "00000008", "name size with NUL");
        // Header and name padded to 4 bytes: 110 + 8 = 118 -> 120.
        assert_eq!(&archive[110..118], b"test.sh\0");
        assert_eq!(&archive[118..120], &[0, 0]);
        assert_eq!(&archive[120..128], b"echo hi\n");
        let trailer = &archive[128..];
        assert_eq!(&trailer[..6], b"070701");
        assert_eq!(&trailer[110..121], b"TRAILER!!!\0");
        assert_eq!(archive.len() % 4, 0);
    }

    #[test]
    fn appended_archive_starts_on_a_4_byte_boundary() {
        let dir = tempfile::tempdir().unwrap();
        let base = dir.path().join("base");
        let out = dir.path().join("out");
        fs::write(&base, b"12345").unwrap();
        write_with_script(&base, "true\n", &out).unwrap();
        let image = fs::read(&out).unwrap();
        assert_eq!(&image[..8], b"12345\0\0\0");
        assert_eq!(&image[8..14], b"070701");
    }
}
