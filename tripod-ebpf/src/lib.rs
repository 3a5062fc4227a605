// This file exists to enable the library target, so `cargo check` and clippy can see the crate.
#![no_std]
