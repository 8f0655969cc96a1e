//! The browser side of file transfers: reading slices of a picked or dropped file,
//! hashing it, and turning verified downloads into blobs the user can save or see.
//! The decisions (what to read next, what to expect) are in [`crate::transfers`].

use sha2::{Digest, Sha256};
use wasm_bindgen::JsCast;
use wasm_bindgen_futures::JsFuture;
use web_sys::{Blob, BlobPropertyBag, File, Url};

/// Bytes hashed per read when computing a file's digest.
const HASH_SLICE: u64 = 4 << 20;

/// Reads `[start, end)` of `file`.
pub async fn read_slice(file: &File, start: u64, end: u64) -> Result<Vec<u8>, String> {
    let blob = file.slice_with_f64_and_f64(start as f64, end as f64).map_err(|_| "cannot slice the file")?;
    let buffer = JsFuture::from(blob.array_buffer()).await.map_err(|_| "cannot read the file")?;
    let buffer: js_sys::ArrayBuffer = buffer.dyn_into().map_err(|_| "the file did not read as bytes")?;
    Ok(js_sys::Uint8Array::new(&buffer).to_vec())
}

/// The SHA-256 of `file`, reporting bytes hashed to `progress` after each slice.
pub async fn hash_file(file: &File, mut progress: impl FnMut(u64)) -> Result<[u8; 32], String> {
    let size = file.size() as u64;
    let mut hasher = Sha256::new();
    let mut done = 0;
    while done < size {
        let end = (done + HASH_SLICE).min(size);
        hasher.update(read_slice(file, done, end).await?);
        done = end;
        progress(done);
    }
    Ok(hasher.finalize().into())
}

/// A download being received: the bytes kept as JavaScript arrays (outside the WASM
/// memory, so a large file does not grow it), and the digest computed as they come.
pub struct Receiving {
    parts: js_sys::Array,
    hasher: Sha256,
}

impl std::fmt::Debug for Receiving {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Receiving").field("parts", &self.parts.length()).finish_non_exhaustive()
    }
}

impl Default for Receiving {
    fn default() -> Self {
        Self { parts: js_sys::Array::new(), hasher: Sha256::new() }
    }
}

impl Receiving {
    /// Keeps a chunk.
    pub fn push(&mut self, data: &[u8]) {
        self.hasher.update(data);
        self.parts.push(&js_sys::Uint8Array::from(data));
    }

    /// The object URL of the whole file if its digest is `expected`.
    pub fn finish(self, expected: &[u8; 32], mime: &str) -> Result<String, String> {
        let actual: [u8; 32] = self.hasher.finalize().into();
        if &actual != expected {
            return Err("the file arrived damaged (SHA-256 mismatch); try again".into());
        }
        let options = BlobPropertyBag::new();
        options.set_type(mime);
        let blob = Blob::new_with_u8_array_sequence_and_options(&self.parts, &options)
            .map_err(|_| "cannot assemble the file")?;
        Url::create_object_url_with_blob(&blob).map_err(|_| "cannot offer the file".into())
    }
}

/// The files of a file list (from an `<input type=file>` or a drop).
pub fn files_of(list: Option<web_sys::FileList>) -> Vec<File> {
    let Some(list) = list else { return Vec::new() };
    (0..list.length()).filter_map(|i| list.get(i)).collect()
}
