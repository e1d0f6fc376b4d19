use serde::{Deserialize, Serialize};

/// What a provider offers and what it charges.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct ProviderSpec {
    pub region: String,
    pub cpu_cores: u32,
    pub memory_gb: f64,
    pub gpus: Vec<GpuSpec>,
    pub storage_gb: f64,
    pub price_per_hour: f64,
}

/// A group of identical GPUs.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct GpuSpec {
    pub model: String,
    pub count: u32,
    pub vram_gb: f64,
}

impl ProviderSpec {
    pub fn gpu_count(&self) -> u32 {
        self.gpus.iter().map(|g| g.count).sum()
    }

    /// The GPU model with the most units, if any.
    pub fn primary_gpu(&self) -> Option<&GpuSpec> {
        self.gpus.iter().max_by_key(|g| g.count)
    }
}
