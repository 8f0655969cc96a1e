//! The SHA-256 of a file's bytes, for the checks at both ends of a transfer.
//!
//! Why `ring` and not `sha2`, which the protocol crate uses for its handshake: a
//! transfer hashes every byte on each side, once before an upload and once as it is
//! received, so the hash sets the transfer's pace wherever the CPU has no SHA
//! instructions. `sha2` falls back to portable code there, and `ring` has assembly that
//! uses AVX: on an Intel Xeon at 2.5 GHz without SHA extensions, 190 MB/s against 353 on
//! one core, and a 1 GiB file went up and down at 170-180 MB/s against 280-305 (`cargo
//! xtask bench files`). Where the CPU has SHA instructions, both use them. The server
//! already has `ring` for TLS.

use std::io::{self, Read};

use ring::digest::{Context, SHA256};

/// A running SHA-256: fed in pieces of any size, finished once.
#[derive(Clone)]
pub struct FileHasher(Context);

impl FileHasher {
    /// Nothing hashed yet.
    pub fn new() -> Self {
        Self(Context::new(&SHA256))
    }

    /// Adds `bytes`.
    pub fn update(&mut self, bytes: &[u8]) {
        self.0.update(bytes);
    }

    /// Adds everything `reader` yields until its end (a file, or `take` of one for its
    /// first bytes); returns how many bytes that was.
    pub fn read_all(&mut self, mut reader: impl Read) -> io::Result<u64> {
        let mut buf = vec![0u8; READ_SIZE];
        let mut total = 0u64;
        loop {
            match reader.read(&mut buf) {
                Ok(0) => return Ok(total),
                Ok(n) => {
                    self.update(buf.get(..n).unwrap_or_default());
                    total += n as u64;
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
    }

    /// The SHA-256 of everything added.
    pub fn finish(self) -> [u8; 32] {
        let mut out = [0u8; 32];
        out.copy_from_slice(self.0.finish().as_ref());
        out
    }
}

impl Default for FileHasher {
    fn default() -> Self {
        Self::new()
    }
}

impl std::fmt::Debug for FileHasher {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("FileHasher(SHA-256)")
    }
}

/// What [`FileHasher::read_all`] reads at a time: large enough that a read costs little
/// next to hashing it.
const READ_SIZE: usize = 1 << 20;

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::indexing_slicing)]
    use super::*;

    fn hex(digest: [u8; 32]) -> String {
        digest.iter().map(|b| format!("{b:02x}")).collect()
    }

    #[test]
    fn the_standard_vectors_come_out() {
        // FIPS 180-2, appendix B: one block, two blocks, and a million 'a's.
        let mut abc = FileHasher::new();
        abc.update(b"abc");
        assert_eq!(hex(abc.finish()), "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad");
        let mut two = FileHasher::new();
        two.update(b"abcdbcdecdefdefgefghfghighijhijkijkljklmklmnlmnomnopnopq");
        assert_eq!(hex(two.finish()), "248d6a61d20638b8e5c026930c3e6039a33ce45964ff2167f6ecedd419db06c1");
        let mut million = FileHasher::new();
        assert_eq!(million.read_all(io::repeat(b'a').take(1_000_000)).unwrap(), 1_000_000);
        assert_eq!(hex(million.finish()), "cdc76e5c9914fb9281a1c7e284d73e67f1809a48a497200e046d39ccc7112cd0");
        assert_eq!(
            hex(FileHasher::new().finish()),
            "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"
        );
    }

    #[test]
    fn pieces_of_any_size_hash_as_the_whole() {
        let data: Vec<u8> = (0..300_000u32).map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8).collect();
        let mut whole = FileHasher::new();
        whole.update(&data);
        let whole = whole.finish();
        // Pieces that cross the 64-byte block boundary at every offset, and a clone
        // taken midway that goes on by itself.
        let mut pieces = FileHasher::new();
        let mut rest = &data[..];
        let mut size = 0;
        let mut midway = None;
        while !rest.is_empty() {
            let (piece, after) = rest.split_at((size % 131).min(rest.len()));
            pieces.update(piece);
            rest = after;
            size += 1;
            if midway.is_none() && rest.len() < data.len() / 2 {
                midway = Some((pieces.clone(), rest));
            }
        }
        assert_eq!(pieces.finish(), whole);
        let (mut clone, remaining) = midway.unwrap();
        clone.update(remaining);
        assert_eq!(clone.finish(), whole);
        let mut read = FileHasher::new();
        assert_eq!(read.read_all(&data[..]).unwrap(), data.len() as u64);
        assert_eq!(read.finish(), whole);
    }
}
