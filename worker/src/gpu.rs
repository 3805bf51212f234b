//! The GPUs on this box, as `nvidia-smi` reports them, for the worker's registration.

use std::time::Duration;

use qm_shared::pb::v1 as pb;

/// GPUs as `nvidia-smi` reports them; none when it is absent or fails (bounded: 5 s).
pub async fn detect_gpus() -> Vec<pb::Gpu> {
    let run = tokio::process::Command::new("nvidia-smi")
        .args(["--query-gpu=index,name,memory.total", "--format=csv,noheader,nounits"])
        .kill_on_drop(true)
        .output();
    let Ok(Ok(out)) = tokio::time::timeout(Duration::from_secs(5), run).await else { return Vec::new() };
    if !out.status.success() {
        return Vec::new();
    }
    parse_gpus(&String::from_utf8_lossy(&out.stdout))
}

/// Lines of `index, name, memory MiB`.
pub fn parse_gpus(text: &str) -> Vec<pb::Gpu> {
    text.lines()
        .filter_map(|line| {
            let mut f = line.split(',').map(str::trim);
            let index = f.next()?.parse().ok()?;
            let model = f.next()?.to_string();
            let mib: u64 = f.next()?.parse().ok()?;
            Some(pb::Gpu { index, model, memory_bytes: mib * 1024 * 1024 })
        })
        .take(64)
        .collect()
}

#[cfg(test)]
mod tests {
    #[test]
    fn nvidia_smi_lines_parse() {
        let gpus = super::parse_gpus("0, NVIDIA L4, 23034\n1, NVIDIA L4, 23034\ngarbage\n");
        assert_eq!(gpus.len(), 2);
        assert_eq!((gpus[1].index, gpus[1].model.as_str(), gpus[1].memory_bytes), (1, "NVIDIA L4", 23034 << 20));
    }
}
