//! What this machine offers, detected once at start-up and declared at registration.

use p2c2r_protocol::{Capabilities, Gpu, task_types};

/// The machine's resources as the peer sees them.
#[derive(Clone, Debug, PartialEq)]
pub struct MachineInfo {
    /// Logical cores this process may use (cgroup and affinity limits applied).
    pub cpu_cores: u32,
    /// Memory in GB (the cgroup's limit when it is lower than the machine's).
    pub ram_gb: f64,
    /// A GPU's name, when one is detectable.
    pub gpu: Option<String>,
}

/// Detects cores and memory through `sysinfo` (the `detect` feature, on by default), and
/// an NVIDIA GPU through its driver's `/proc` entry on Linux. Never fails: unknown values
/// fall back to 1 core and 0 GB. Without `detect`, cores are what the standard library
/// reports and memory is 0 GB (unknown).
pub fn detect() -> MachineInfo {
    let available = std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1);
    let (cores, ram_bytes) = cores_and_memory(available);
    MachineInfo {
        cpu_cores: u32::try_from(cores.max(1)).unwrap_or(u32::MAX),
        ram_gb: (ram_bytes as f64 / 1e9 * 100.0).round() / 100.0,
        gpu: detect_gpu(),
    }
}

#[cfg(feature = "detect")]
fn cores_and_memory(available: usize) -> (usize, u64) {
    match sysinfo::System::new() {
        Ok(mut sys) => {
            sys.refresh_memory();
            sys.refresh_cpu_list(sysinfo::CpuRefreshKind::nothing());
            let listed = sys.cpus().len();
            let cores = if listed == 0 { available } else { listed.min(available) };
            let mut ram = sys.total_memory();
            if let Some(cgroup) = sys.cgroup_limits()
                && cgroup.total_memory > 0
            {
                ram = ram.min(cgroup.total_memory);
            }
            (cores, ram)
        }
        Err(_) => (available, 0),
    }
}

#[cfg(not(feature = "detect"))]
fn cores_and_memory(available: usize) -> (usize, u64) {
    (available, 0)
}

fn detect_gpu() -> Option<String> {
    let entries = std::fs::read_dir("/proc/driver/nvidia/gpus").ok()?;
    for entry in entries.flatten() {
        if let Ok(info) = std::fs::read_to_string(entry.path().join("information"))
            && let Some(model) = info.lines().find_map(|l| l.strip_prefix("Model:"))
        {
            return Some(model.trim().to_owned());
        }
    }
    None
}

/// The capabilities a peer registers with.
pub fn capabilities(machine: &MachineInfo, max_concurrent_tasks: u32, task_types: &[String]) -> Capabilities {
    Capabilities {
        cpu_cores: Some(machine.cpu_cores),
        ram_gb: Some(machine.ram_gb),
        gpu: Some(match &machine.gpu {
            Some(name) => Gpu::Name(name.clone()),
            None => Gpu::Flag(false),
        }),
        task_types: Some(task_types.to_vec()),
        max_concurrent_tasks: Some(max_concurrent_tasks),
        determinism: Some(p2c2r_sim::determinism()),
        // Taken only on a binary connection; the coordinator says in its ack whether it
        // takes the peer's chunks too.
        chunked_frames: true,
    }
}

/// Every task type this peer runs, as owned strings.
pub fn all_task_types() -> Vec<String> {
    task_types::ALL.iter().map(|t| (*t).to_owned()).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn detection_gives_plausible_values() {
        let m = detect();
        assert!(m.cpu_cores >= 1);
        assert!(m.ram_gb >= 0.0);
        let caps = capabilities(&m, 3, &all_task_types());
        assert_eq!(caps.max_concurrent_tasks, Some(3));
        assert_eq!(caps.task_types.unwrap(), task_types::ALL.map(String::from).to_vec());
        assert_eq!(caps.determinism, Some(p2c2r_sim::determinism()), "the setup results depend on is declared");
    }
}
