//! Links with esp-hal's linker script (its build script only puts it on the search path).

fn main() {
    println!("cargo:rustc-link-arg=-Tlinkall.x");
    println!("cargo:rerun-if-changed=build.rs");
}
