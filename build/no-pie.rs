//! The build script of every CNI plugin binary (`build = ".../build/no-pie.rs"` in their
//! Cargo.toml): links them as position-dependent executables, as Go links Calico's own
//! plugins. A PIE this size spends about 0.2 ms per start applying relocations, and a CNI
//! plugin is started for every pod. Only the package's binaries: its tests and the libraries
//! others link are untouched.
fn main() {
    println!("cargo:rustc-link-arg-bins=-no-pie");
}
