//! The hardware and price catalogue the simulated fleet draws its specs from.

use rand::Rng;

use crate::model::{GpuSpec, ProviderSpec};

/// A region with its draw weight and UTC offset (hours), which shifts the diurnal load.
#[derive(Clone, Copy, Debug)]
pub struct Region {
    pub name: &'static str,
    pub weight: u32,
    pub utc_offset_hours: i8,
    /// Price level relative to us-east (power and colocation costs differ).
    pub price_factor: f64,
}

/// The regions of the simulated marketplace.
pub const REGIONS: [Region; 7] = [
    Region {
        name: "us-east",
        weight: 25,
        utc_offset_hours: -5,
        price_factor: 1.00,
    },
    Region {
        name: "us-west",
        weight: 15,
        utc_offset_hours: -8,
        price_factor: 1.05,
    },
    Region {
        name: "eu-central",
        weight: 18,
        utc_offset_hours: 1,
        price_factor: 1.08,
    },
    Region {
        name: "eu-west",
        weight: 14,
        utc_offset_hours: 0,
        price_factor: 1.06,
    },
    Region {
        name: "ap-southeast",
        weight: 12,
        utc_offset_hours: 8,
        price_factor: 1.12,
    },
    Region {
        name: "ap-northeast",
        weight: 10,
        utc_offset_hours: 9,
        price_factor: 1.15,
    },
    Region {
        name: "sa-east",
        weight: 6,
        utc_offset_hours: -3,
        price_factor: 0.95,
    },
];

/// A GPU model as the marketplace lists it, with its typical hourly price per unit.
#[derive(Clone, Copy, Debug)]
pub struct GpuModel {
    pub model: &'static str,
    pub vram_gb: f64,
    pub price_per_gpu_hour: f64,
    /// Share (percent) of GPU providers with this model.
    pub weight: u32,
}

/// GPU models on offer. An A100 comes in two VRAM sizes under one model name, so a job
/// asks for `A100` plus a minimum VRAM.
pub const GPU_MODELS: [GpuModel; 5] = [
    GpuModel {
        model: "H100",
        vram_gb: 80.0,
        price_per_gpu_hour: 2.50,
        weight: 17,
    },
    GpuModel {
        model: "A100",
        vram_gb: 80.0,
        price_per_gpu_hour: 1.60,
        weight: 13,
    },
    GpuModel {
        model: "A100",
        vram_gb: 40.0,
        price_per_gpu_hour: 1.20,
        weight: 16,
    },
    GpuModel {
        model: "RTX4090",
        vram_gb: 24.0,
        price_per_gpu_hour: 0.45,
        weight: 34,
    },
    GpuModel {
        model: "L4",
        vram_gb: 24.0,
        price_per_gpu_hour: 0.40,
        weight: 20,
    },
];

/// Share of providers that offer no GPU at all.
pub const CPU_ONLY_SHARE: f64 = 0.25;

const GPU_COUNTS: [u32; 4] = [1, 2, 4, 8];
const CPU_ONLY_CORES: [u32; 6] = [8, 16, 32, 64, 96, 128];
const STORAGE_GB: [f64; 5] = [500.0, 1000.0, 2000.0, 4000.0, 8000.0];

pub fn region(name: &str) -> Option<&'static Region> {
    REGIONS.iter().find(|r| r.name == name)
}

fn pick_weighted<'a, T, R: Rng>(items: &'a [T], weight: impl Fn(&T) -> u32, rng: &mut R) -> &'a T {
    let total: u32 = items.iter().map(&weight).sum();
    let mut x = rng.random_range(0..total);
    for item in items {
        let w = weight(item);
        if x < w {
            return item;
        }
        x -= w;
    }
    &items[items.len() - 1]
}

pub fn random_region<R: Rng>(rng: &mut R) -> &'static Region {
    pick_weighted(&REGIONS, |r| r.weight, rng)
}

/// The list price of a machine: GPUs dominate, then cores, memory and disk, scaled by the
/// region's price level. Providers then price around it (see [`random_spec`]).
pub fn fair_price(spec: &ProviderSpec) -> f64 {
    let gpu: f64 = spec
        .gpus
        .iter()
        .map(|g| {
            let unit = GPU_MODELS
                .iter()
                .find(|m| m.model == g.model && m.vram_gb == g.vram_gb)
                .map_or(1.0, |m| m.price_per_gpu_hour);
            unit * f64::from(g.count)
        })
        .sum();
    let base = gpu
        + 0.02 * f64::from(spec.cpu_cores)
        + 0.003 * spec.memory_gb
        + 0.000_05 * spec.storage_gb;
    base * region(&spec.region).map_or(1.0, |r| r.price_factor)
}

/// A machine of the given hardware in `region`, priced at `price_factor` × its fair price.
pub fn machine(
    region: &str,
    gpu: Option<(&GpuModel, u32)>,
    cpu_cores: u32,
    memory_gb: f64,
    storage_gb: f64,
    price_factor: f64,
) -> ProviderSpec {
    let mut spec = ProviderSpec {
        region: region.to_owned(),
        cpu_cores,
        memory_gb,
        gpus: gpu
            .map(|(m, count)| GpuSpec {
                model: m.model.to_owned(),
                count,
                vram_gb: m.vram_gb,
            })
            .into_iter()
            .collect(),
        storage_gb,
        price_per_hour: 0.0,
    };
    spec.price_per_hour = round_cents(fair_price(&spec) * price_factor);
    spec
}

/// A random machine: GPU model and count, cores and memory sized to the GPUs, and a price
/// around the fair one (log-normal noise, σ ≈ 0.12) times `price_bias`.
pub fn random_spec<R: Rng>(rng: &mut R, price_bias: f64) -> ProviderSpec {
    let region = random_region(rng);
    let (gpu, cores) = if rng.random::<f64>() < CPU_ONLY_SHARE {
        (
            None,
            CPU_ONLY_CORES[rng.random_range(0..CPU_ONLY_CORES.len())],
        )
    } else {
        let m = pick_weighted(&GPU_MODELS, |m| m.weight, rng);
        let count = GPU_COUNTS[rng.random_range(0..GPU_COUNTS.len())];
        // Hosts are sized to feed their GPUs: 8 to 16 cores a GPU.
        let per_gpu = [8, 12, 16][rng.random_range(0..3)];
        (Some((m, count)), count * per_gpu)
    };
    let memory_gb = f64::from(cores) * [4.0, 8.0][rng.random_range(0..2)];
    let storage_gb = STORAGE_GB[rng.random_range(0..STORAGE_GB.len())];
    let noise = (0.12 * super::normal(rng)).exp();
    machine(
        region.name,
        gpu,
        cores,
        memory_gb,
        storage_gb,
        price_bias * noise,
    )
}

fn round_cents(x: f64) -> f64 {
    (x * 100.0).round() / 100.0
}
