//! Rebuilds the server when the browser client in `web-wasm/dist/` changes (or
//! appears), since that directory is embedded in the binary.

fn main() {
    println!("cargo:rerun-if-changed=../web-wasm/dist");
}
