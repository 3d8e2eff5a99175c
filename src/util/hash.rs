//! SHA-256 helpers for artifact checksums and cache keys.

use sha2::{Digest, Sha256};
use std::fs::File;
use std::io::{self, Read};
use std::path::Path;

/// Hex SHA-256 of a file, streamed in 1 MiB blocks.
pub fn sha256_file(path: &Path) -> io::Result<String> {
    let mut file = File::open(path)?;
    let mut hasher = Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = file.read(&mut buf)?;
        if n == 0 {
            break;
        }
        hasher.update(&buf[..n]);
    }
    Ok(hex::encode(hasher.finalize()))
}

/// Hex SHA-256 of bytes.
pub fn sha256_bytes(bytes: &[u8]) -> String {
    hex::encode(Sha256::digest(bytes))
}

/// Incremental hasher for keys made of labelled parts; each part is length-prefixed
/// so that `("ab","c")` and `("a","bc")` never collide.
#[derive(Default)]
pub struct KeyHasher(Sha256);

impl KeyHasher {
    pub fn part(&mut self, label: &str, value: &str) -> &mut Self {
        for s in [label, value] {
            self.0.update((s.len() as u64).to_le_bytes());
            self.0.update(s.as_bytes());
        }
        self
    }

    pub fn finish(self) -> String {
        hex::encode(self.0.finalize())
    }
}

/// Hex SHA-256 of a file, or of a directory's files (their relative paths and contents).
pub fn sha256_path(path: &Path) -> io::Result<String> {
    if path.is_dir() {
        let mut key = KeyHasher::default();
        for rel in super::fsx::list_files(path)? {
            key.part(&rel.to_string_lossy(), &sha256_file(&path.join(&rel))?);
        }
        Ok(key.finish())
    } else {
        sha256_file(path)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn known_vector() {
        assert_eq!(
            sha256_bytes(b"abc"),
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
    }

    #[test]
    fn key_parts_are_unambiguous() {
        let mut a = KeyHasher::default();
        a.part("x", "ab").part("y", "c");
        let mut b = KeyHasher::default();
        b.part("x", "a").part("y", "bc");
        assert_ne!(a.finish(), b.finish());
    }
}
