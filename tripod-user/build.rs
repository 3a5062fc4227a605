//! Builds the eBPF object with aya-build and leaves it in OUT_DIR, where
//! `include_bytes_aligned!` embeds it into the binary.
use anyhow::Context as _;
use aya_build::{Package, Toolchain};

fn main() -> anyhow::Result<()> {
    // xtask picks the toolchain: nightly when installed, else stable with RUSTC_BOOTSTRAP=1.
    println!("cargo:rerun-if-env-changed=TRIPOD_EBPF_TOOLCHAIN");
    let toolchain = std::env::var("TRIPOD_EBPF_TOOLCHAIN").unwrap_or_else(|_| "nightly".into());
    let ebpf = Package {
        name: "tripod-ebpf",
        root_dir: concat!(env!("CARGO_MANIFEST_DIR"), "/../tripod-ebpf"),
        ..Default::default()
    };
    aya_build::build_ebpf([ebpf], Toolchain::Custom(&toolchain)).context(
        "building the eBPF program (run `cargo xtask setup` to install bpf-linker and rust-src)",
    )
}
