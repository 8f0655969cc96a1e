//! AES-128-CCM (RFC 3610, NIST SP 800-38C) for our one parameter set: a 13-byte nonce,
//! a 16-byte tag, messages under 64 KiB.
//!
//! Why our own mode code instead of the `ccm` crate: that crate runs CTR and CBC-MAC as
//! two passes of single-block calls, and each call goes through the `aes` crate's
//! run-time CPU dispatch, so a default build (no `-C target-cpu`) reaches about a quarter
//! of what the hardware does. Here one dispatch covers a whole frame: the closure below
//! is monomorphised for, and inlined into, the backend the CPU supports (AES-NI, VAES, or
//! the constant-time software fallback on the ESP32-C3), and the keystream is made a
//! batch of blocks at a time while the CBC-MAC chain, which is serial by nature, runs
//! beside it. The block cipher itself stays the audited `aes` crate; this file only
//! arranges its calls, and `tests/aead_vectors.rs` checks it against published vectors,
//! OpenSSL and the `ccm` crate.

use aes::cipher::array::Array;
use aes::cipher::{
    Block, BlockCipherEncBackend, BlockCipherEncClosure, BlockCipherEncrypt, BlockSizeUser, KeyInit,
    ParBlocks, ParBlocksSizeUser, consts::U16, typenum::Unsigned,
};
use aes::{Aes128, Aes128Enc};

/// Nonce length: 13 bytes, which leaves L = 2 bytes for the message length.
pub const CCM_NONCE_LEN: usize = 13;
/// Tag length: the full 16 bytes.
pub const CCM_TAG_LEN: usize = 16;
/// The longest message L = 2 can describe.
pub const CCM_MESSAGE_MAX: usize = 0xFFFF;
/// The longest associated data this implementation accepts (the two-byte length form).
pub const CCM_AAD_MAX: usize = 0xFEFF;

const BLOCK: usize = 16;
/// Flags of B0: Adata bit, (M - 2) / 2 = 7 in bits 3..5, L - 1 = 1 in bits 0..2.
const B0_FLAGS_NO_AAD: u8 = (7 << 3) | 1;
const B0_FLAGS_AAD: u8 = 0x40 | B0_FLAGS_NO_AAD;
/// Flags of the counter blocks A_i: L - 1.
const CTR_FLAGS: u8 = 1;

/// Why a CCM operation was refused. Callers map it to their own error.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CcmError {
    /// The message or associated data is longer than the parameters allow.
    TooLong,
    /// The tag does not match.
    Forged,
}

/// An AES-128-CCM key with a 13-byte nonce and a 16-byte tag.
#[derive(Clone)]
pub struct Aes128Ccm16 {
    /// Encryption only: CTR and CBC-MAC never decrypt a block, and the decryption round
    /// keys would double what every connection keeps per direction.
    cipher: Aes128Enc,
}

impl core::fmt::Debug for Aes128Ccm16 {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        // Never the key schedule.
        f.debug_struct("Aes128Ccm16").finish_non_exhaustive()
    }
}

impl Aes128Ccm16 {
    /// Expands `key`.
    pub fn new(key: &[u8; 16]) -> Self {
        Self { cipher: Aes128Enc::new(&Array::from(*key)) }
    }

    /// Encrypts `data` in place and returns the tag.
    pub fn seal(
        &self,
        nonce: &[u8; CCM_NONCE_LEN],
        aad: &[u8],
        data: &mut [u8],
    ) -> Result<[u8; CCM_TAG_LEN], CcmError> {
        check_lengths(aad, data)?;
        let mut job = Job { nonce, aad, data, direction: Pass::Seal, tag: [0; CCM_TAG_LEN] };
        self.cipher.encrypt_with_backend(&mut job);
        Ok(job.tag)
    }

    /// Decrypts `data` in place if `tag` authenticates it. On failure `data` is zeroed,
    /// so unauthenticated plaintext never reaches the caller.
    pub fn open(
        &self,
        nonce: &[u8; CCM_NONCE_LEN],
        aad: &[u8],
        data: &mut [u8],
        tag: &[u8; CCM_TAG_LEN],
    ) -> Result<(), CcmError> {
        check_lengths(aad, data)?;
        let mut job = Job { nonce, aad, data, direction: Pass::Open, tag: [0; CCM_TAG_LEN] };
        self.cipher.encrypt_with_backend(&mut job);
        if constant_time_eq(&job.tag, tag) {
            Ok(())
        } else {
            job.data.fill(0);
            Err(CcmError::Forged)
        }
    }
}

fn check_lengths(aad: &[u8], data: &[u8]) -> Result<(), CcmError> {
    if data.len() > CCM_MESSAGE_MAX || aad.len() > CCM_AAD_MAX { Err(CcmError::TooLong) } else { Ok(()) }
}

/// Compares without an early exit, so the time taken says nothing about where the
/// tags differ.
fn constant_time_eq(a: &[u8; CCM_TAG_LEN], b: &[u8; CCM_TAG_LEN]) -> bool {
    let diff = a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y));
    core::hint::black_box(diff) == 0
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Pass {
    Seal,
    Open,
}

/// One frame's work, run inside the backend closure.
struct Job<'a> {
    nonce: &'a [u8; CCM_NONCE_LEN],
    aad: &'a [u8],
    data: &'a mut [u8],
    direction: Pass,
    /// On return: the computed tag (CBC-MAC encrypted with S0).
    tag: [u8; CCM_TAG_LEN],
}

impl BlockSizeUser for &mut Job<'_> {
    type BlockSize = U16;
}

impl BlockCipherEncClosure for &mut Job<'_> {
    // Inlined into the backend's `#[target_feature]` function so that the block calls
    // inside it are inlined too.
    #[inline(always)]
    fn call<B: BlockCipherEncBackend<BlockSize = U16>>(self, backend: &B) {
        let mac = self.cbc_mac_header(backend);
        let mac = self.crypt_and_mac(backend, mac);
        let mut s0 = self.counter_block(0);
        backend.encrypt_block_inplace(&mut s0);
        for (t, (m, s)) in self.tag.iter_mut().zip(mac.iter().zip(s0.iter())) {
            *t = m ^ s;
        }
    }
}

/// A block of the flags byte, the nonce and a two-byte big-endian number: both B0
/// (with the message length) and the counter blocks A_i (with i) have this shape.
#[inline(always)]
fn nonce_block(flags: u8, nonce: &[u8; CCM_NONCE_LEN], number: u16) -> Block<Aes128> {
    let [n0, n1, n2, n3, n4, n5, n6, n7, n8, n9, n10, n11, n12] = *nonce;
    let [hi, lo] = number.to_be_bytes();
    Array([flags, n0, n1, n2, n3, n4, n5, n6, n7, n8, n9, n10, n11, n12, hi, lo])
}

impl Job<'_> {
    #[inline(always)]
    fn counter_block(&self, index: u16) -> Block<Aes128> {
        nonce_block(CTR_FLAGS, self.nonce, index)
    }

    /// CBC-MAC over B0 and the associated data.
    #[inline(always)]
    fn cbc_mac_header<B: BlockCipherEncBackend<BlockSize = U16>>(&self, backend: &B) -> Block<Aes128> {
        cbc_mac_header(backend, self.nonce, self.aad, self.data.len())
    }

    /// CTR encryption or decryption of the data with counters from 1, and the CBC-MAC
    /// over the plaintext, a batch of blocks at a time.
    #[inline(always)]
    fn crypt_and_mac<B: BlockCipherEncBackend<BlockSize = U16>>(
        &mut self,
        backend: &B,
        mut mac: Block<Aes128>,
    ) -> Block<Aes128> {
        let batch_blocks = <B as ParBlocksSizeUser>::ParBlocksSize::USIZE;
        let mut keystream = ParBlocks::<B>::default();
        let mut counter: u16 = 1;
        let direction = self.direction;
        let nonce = self.nonce;
        for batch in self.data.chunks_mut(batch_blocks * BLOCK) {
            let blocks = keystream_batch(backend, nonce, counter, batch.len(), &mut keystream);
            // At most 4,096 blocks in a message: no overflow.
            counter = counter.wrapping_add(blocks as u16);
            for (chunk, stream) in batch.chunks_mut(BLOCK).zip(keystream.iter()) {
                if direction == Pass::Seal {
                    xor_into(&mut mac, chunk);
                    xor_into_bytes(chunk, stream);
                } else {
                    xor_into_bytes(chunk, stream);
                    xor_into(&mut mac, chunk);
                }
                backend.encrypt_block_inplace(&mut mac);
            }
        }
        mac
    }
}

/// CBC-MAC over B0 (which holds the message length) and the associated data.
#[inline(always)]
fn cbc_mac_header<B: BlockCipherEncBackend<BlockSize = U16>>(
    backend: &B,
    nonce: &[u8; CCM_NONCE_LEN],
    aad: &[u8],
    data_len: usize,
) -> Block<Aes128> {
    let flags = if aad.is_empty() { B0_FLAGS_NO_AAD } else { B0_FLAGS_AAD };
    // Lengths were checked to fit in 16 bits.
    let mut mac = nonce_block(flags, nonce, data_len as u16);
    backend.encrypt_block_inplace(&mut mac);
    if aad.is_empty() {
        return mac;
    }
    // The associated data, prefixed with its two-byte length, zero-padded.
    let aad_len = (aad.len() as u16).to_be_bytes();
    let mut bytes = aad_len.into_iter().chain(aad.iter().copied()).peekable();
    while bytes.peek().is_some() {
        let mut block = [0u8; BLOCK];
        // `zip` asks the block first, so no byte is taken and dropped.
        for (slot, byte) in block.iter_mut().zip(&mut bytes) {
            *slot = byte;
        }
        xor_into(&mut mac, &block);
        backend.encrypt_block_inplace(&mut mac);
    }
    mac
}

/// Makes the keystream for the next `bytes` (at most one batch) of a message, from
/// counter block `first`, into `keystream`; returns how many blocks that took.
#[inline(always)]
fn keystream_batch<B: BlockCipherEncBackend<BlockSize = U16>>(
    backend: &B,
    nonce: &[u8; CCM_NONCE_LEN],
    first: u16,
    bytes: usize,
    keystream: &mut ParBlocks<B>,
) -> usize {
    let batch_blocks = <B as ParBlocksSizeUser>::ParBlocksSize::USIZE;
    let blocks = bytes.div_ceil(BLOCK).min(batch_blocks);
    let mut counter = first;
    for a in keystream.iter_mut().take(blocks) {
        *a = nonce_block(CTR_FLAGS, nonce, counter);
        counter = counter.wrapping_add(1);
    }
    if blocks == batch_blocks {
        backend.encrypt_par_blocks_inplace(keystream);
    } else if let Some(tail) = keystream.get_mut(..blocks) {
        backend.encrypt_tail_blocks_inplace(tail);
    }
    blocks
}

/// How many messages [`Aes128Ccm16::seal_batch`] and [`Aes128Ccm16::open_batch`] run
/// side by side. CBC-MAC is a chain: each block waits for the previous block's AES, so
/// one message leaves the AES units idle most of the time (on x86, an AES round's
/// latency is several times its issue rate). The chains of different messages do not
/// depend on each other, so interleaving four of them keeps the units busy.
pub const LANES: usize = 8;

/// One message of a batch: its nonce, associated data and data (encrypted or decrypted
/// in place), and its tag (written by a seal, checked by an open).
#[derive(Debug, Default)]
pub struct BatchItem<'a> {
    /// The message's nonce.
    pub nonce: [u8; CCM_NONCE_LEN],
    /// The associated data.
    pub aad: &'a [u8],
    /// The data, transformed in place.
    pub data: &'a mut [u8],
    /// The tag: output of a seal, input of an open.
    pub tag: [u8; CCM_TAG_LEN],
}

/// Why an open of a batch failed, and where.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BatchOpenError {
    /// The items before this index opened; this one and every later one are zeroed.
    pub index: usize,
    /// Why.
    pub error: CcmError,
}

impl Aes128Ccm16 {
    /// Encrypts every item in place and writes its tag: the same output as
    /// [`Self::seal`] item by item, computed up to [`LANES`] items at a time. Nothing is
    /// encrypted if any item is too long.
    pub fn seal_batch(&self, items: &mut [BatchItem<'_>]) -> Result<(), CcmError> {
        for item in items.iter() {
            check_lengths(item.aad, item.data)?;
        }
        for group in items.chunks_mut(LANES) {
            let tags = self.run_group(group, Pass::Seal);
            for (item, tag) in group.iter_mut().zip(tags) {
                item.tag = tag;
            }
        }
        Ok(())
    }

    /// Decrypts every item in place if its tag authenticates it, up to [`LANES`] at a
    /// time. On the first failure, that item and every later one are zeroed (so
    /// unauthenticated plaintext never reaches the caller) and the error says which;
    /// the items before it are good.
    pub fn open_batch(&self, items: &mut [BatchItem<'_>]) -> Result<(), BatchOpenError> {
        if let Some(index) = items.iter().position(|item| check_lengths(item.aad, item.data).is_err()) {
            zero_from(items, index);
            return Err(BatchOpenError { index, error: CcmError::TooLong });
        }
        let mut done = 0;
        while done < items.len() {
            let end = (done + LANES).min(items.len());
            let group = items.get_mut(done..end).unwrap_or_default();
            let computed = self.run_group(group, Pass::Open);
            if let Some(bad) =
                group.iter().zip(computed.iter()).position(|(item, tag)| !constant_time_eq(tag, &item.tag))
            {
                let index = done + bad;
                zero_from(items, index);
                return Err(BatchOpenError { index, error: CcmError::Forged });
            }
            done = end;
        }
        Ok(())
    }
}

impl Aes128Ccm16 {
    /// Encrypts or decrypts up to [`LANES`] items and returns their computed tags. A
    /// lone item (a chat frame, usually) takes the one-message path, which does not
    /// set up the keystream room of every lane.
    fn run_group(&self, group: &mut [BatchItem<'_>], direction: Pass) -> [[u8; CCM_TAG_LEN]; LANES] {
        let mut tags = [[0; CCM_TAG_LEN]; LANES];
        if let [item] = group {
            let mut job = Job {
                nonce: &item.nonce,
                aad: item.aad,
                data: &mut *item.data,
                direction,
                tag: [0; CCM_TAG_LEN],
            };
            self.cipher.encrypt_with_backend(&mut job);
            tags[0] = job.tag;
        } else {
            let mut job = LaneJob { items: group, direction, tags };
            self.cipher.encrypt_with_backend(&mut job);
            tags = job.tags;
        }
        tags
    }
}

fn zero_from(items: &mut [BatchItem<'_>], index: usize) {
    for item in items.iter_mut().skip(index) {
        item.data.fill(0);
    }
}

/// Up to [`LANES`] messages in lockstep, run inside the backend closure.
struct LaneJob<'j, 'a> {
    items: &'j mut [BatchItem<'a>],
    direction: Pass,
    /// On return: the computed tag of each item.
    tags: [[u8; CCM_TAG_LEN]; LANES],
}

impl BlockSizeUser for &mut LaneJob<'_, '_> {
    type BlockSize = U16;
}

impl BlockCipherEncClosure for &mut LaneJob<'_, '_> {
    #[inline(always)]
    fn call<B: BlockCipherEncBackend<BlockSize = U16>>(self, backend: &B) {
        let lanes = self.items.len().min(LANES);
        let batch_blocks = <B as ParBlocksSizeUser>::ParBlocksSize::USIZE;
        let batch_bytes = batch_blocks * BLOCK;
        let mut macs: [Block<Aes128>; LANES] = Default::default();
        for (mac, item) in macs.iter_mut().zip(self.items.iter()) {
            *mac = cbc_mac_header(backend, &item.nonce, item.aad, item.data.len());
        }
        let longest = self.items.iter().map(|item| item.data.len()).max().unwrap_or(0);
        let mut keystreams: [ParBlocks<B>; LANES] = Default::default();
        let mut counter: u16 = 1;
        let mut offset = 0;
        while offset < longest {
            // This round's slice of each message and its keystream.
            let mut blocks = [0usize; LANES];
            for ((item, stream), count) in self.items.iter().zip(keystreams.iter_mut()).zip(blocks.iter_mut())
            {
                let bytes = item.data.len().saturating_sub(offset).min(batch_bytes);
                *count = keystream_batch(backend, &item.nonce, counter, bytes, stream);
            }
            if self.direction == Pass::Open {
                self.apply_keystream(&keystreams, offset, batch_bytes);
            }
            // Whole blocks only: a short last block takes the general path below.
            let full = self.items.iter().all(|item| item.data.len() >= offset + batch_bytes);
            if full && lanes == LANES {
                // The common case of a bulk transfer: every lane has a whole batch, and
                // the lane loop has a constant bound the compiler unrolls, so the four
                // chains sit in registers and their AES rounds overlap.
                for k in 0..batch_blocks {
                    let start = offset + k * BLOCK;
                    for (mac, item) in macs.iter_mut().zip(self.items.iter()) {
                        if let Some(chunk) = item.data.get(start..start + BLOCK) {
                            xor_into(mac, chunk);
                        }
                        backend.encrypt_block_inplace(mac);
                    }
                }
            } else {
                for k in 0..batch_blocks {
                    let start = offset + k * BLOCK;
                    for ((mac, item), &count) in macs.iter_mut().zip(self.items.iter()).zip(blocks.iter()) {
                        if k < count {
                            let end = (start + BLOCK).min(item.data.len());
                            xor_into(mac, item.data.get(start..end).unwrap_or_default());
                            backend.encrypt_block_inplace(mac);
                        }
                    }
                }
            }
            if self.direction == Pass::Seal {
                self.apply_keystream(&keystreams, offset, batch_bytes);
            }
            offset += batch_bytes;
            // At most 4,096 blocks in a message: no overflow.
            counter = counter.wrapping_add(batch_blocks as u16);
        }
        for ((tag, mac), item) in self.tags.iter_mut().zip(macs.iter()).zip(self.items.iter()) {
            let mut s0 = nonce_block(CTR_FLAGS, &item.nonce, 0);
            backend.encrypt_block_inplace(&mut s0);
            for (t, (m, s)) in tag.iter_mut().zip(mac.iter().zip(s0.iter())) {
                *t = m ^ s;
            }
        }
    }
}

impl LaneJob<'_, '_> {
    /// XORs each lane's keystream into its slice of this round.
    #[inline(always)]
    fn apply_keystream<P: AsRef<[Block<Aes128>]>>(
        &mut self,
        keystreams: &[P; LANES],
        offset: usize,
        batch_bytes: usize,
    ) {
        for (item, stream) in self.items.iter_mut().zip(keystreams.iter()) {
            let end = (offset + batch_bytes).min(item.data.len());
            if let Some(slice) = item.data.get_mut(offset..end) {
                for (chunk, block) in slice.chunks_mut(BLOCK).zip(stream.as_ref().iter()) {
                    xor_into_bytes(chunk, block);
                }
            }
        }
    }
}

/// XORs a keystream block into `bytes` (at most one block).
#[inline(always)]
fn xor_into_bytes(bytes: &mut [u8], stream: &Block<Aes128>) {
    for (byte, key) in bytes.iter_mut().zip(stream.iter()) {
        *byte ^= key;
    }
}

/// XORs `bytes` (at most one block; a short final block is implicitly zero-padded)
/// into `block`.
#[inline(always)]
fn xor_into(block: &mut Block<Aes128>, bytes: &[u8]) {
    for (b, x) in block.iter_mut().zip(bytes) {
        *b ^= x;
    }
}
