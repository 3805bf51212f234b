//! A container image for tests, built here from local files: `FROM scratch`, the machine's
//! static busybox (Debian's busybox-static) and its applets. No registry is needed.

use std::process::Command;
use std::sync::OnceLock;

/// The image's name.
pub const BUSYBOX_IMAGE: &str = "qm-test-busybox:1";

/// Builds [`BUSYBOX_IMAGE`] once per test process (the Docker Engine caches its layers) and
/// returns its name.
pub fn busybox_image() -> &'static str {
    static BUILT: OnceLock<()> = OnceLock::new();
    BUILT.get_or_init(|| {
        let ctx = tempfile::tempdir().expect("a build context");
        std::fs::copy("/bin/busybox", ctx.path().join("busybox")).expect("/bin/busybox (Debian's busybox-static)");
        std::fs::write(
            ctx.path().join("Dockerfile"),
            "FROM scratch\nCOPY busybox /bin/busybox\nRUN [\"/bin/busybox\", \"--install\", \"-s\", \"/bin\"]\n",
        )
        .expect("Dockerfile");
        let out = Command::new("docker")
            .args(["build", "-q", "-t", BUSYBOX_IMAGE])
            .arg(ctx.path())
            .output()
            .expect("docker runs");
        assert!(out.status.success(), "docker build: {}", String::from_utf8_lossy(&out.stderr));
    });
    BUSYBOX_IMAGE
}
