//! Declares the `tokio_unstable` cfg (set in `.cargo/config.toml`), which the simulator
//! checks to know whether its runs are deterministic.

fn main() {
    println!("cargo::rustc-check-cfg=cfg(tokio_unstable)");
}
