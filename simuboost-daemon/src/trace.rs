//! The eBPF tracer: which guest frames this daemon's VM touches, per interval.
//!
//! Loads `simuboost-ebpf` (embedded at build time) with aya, checks that the tracepoint fields
//! the programs read sit where the running kernel's tracefs says, attaches every program whose
//! tracepoint exists, and restricts them to this process. The recorder drains the event ring at
//! each interval boundary while the guest is paused, so every event belongs to the interval
//! that just ended.

use std::collections::HashSet;
use std::path::Path;

use aya::maps::{Array, MapData, PerCpuArray, RingBuf};
use aya::programs::TracePoint;
use aya::{Ebpf, EbpfLoader};
use simuboost_common::{
    Counter, Source, TouchEvent, TraceConfig, CONFIG_MAP, COUNTERS_MAP, EVENTS_MAP, PROGRAMS,
    REPORTED_MAP, TOUCH_EVENT_SIZE,
};
use zerocopy::FromBytes;

/// The eBPF object, built from simuboost-ebpf by this crate's build script.
static EBPF_OBJECT: &[u8] = aya::include_bytes_aligned!(env!("SIMUBOOST_EBPF_OBJECT"));

const TRACEFS: &str = "/sys/kernel/tracing";

/// Errors of the tracer. Each says what is missing and how to do without it.
#[derive(Debug, thiserror::Error)]
pub enum TraceError {
    /// tracefs is not mounted and mounting it failed.
    #[error(
        "tracefs is not mounted at {TRACEFS} and mounting it failed ({0}); mount it \
         (`mount -t tracefs nodev {TRACEFS}`) or record without access logs (--tracer none)"
    )]
    Tracefs(String),
    /// None of the KVM tracepoints exists.
    #[error(
        "none of KVM's MMU tracepoints (kvmmmu:kvm_mmu_set_spte, kvm:kvm_page_fault, ...) exists \
         on this kernel; record without access logs (--tracer none)"
    )]
    NoTracepoints,
    /// A field is not where the programs read it.
    #[error(
        "tracepoint {category}:{event} on this kernel has field `{field}` {found}, but the eBPF \
         programs read it at offset {offset} (size {size}); this kernel is not supported by the \
         tracer; record without access logs (--tracer none)"
    )]
    FieldMismatch {
        /// Tracepoint category.
        category: &'static str,
        /// Tracepoint name.
        event: &'static str,
        /// Field name.
        field: &'static str,
        /// Where the kernel has it.
        found: String,
        /// Where the program reads it.
        offset: usize,
        /// Size the program reads.
        size: usize,
    },
    /// Loading or attaching failed (usually missing privileges).
    #[error(
        "cannot load the eBPF tracer: {0} (it needs root or CAP_BPF and CAP_PERFMON); record \
         without access logs (--tracer none)"
    )]
    Load(String),
}

fn load_err(e: impl std::fmt::Display) -> TraceError {
    TraceError::Load(e.to_string())
}

/// Bytes the BPF ring buffer adds to every record (`BPF_RINGBUF_HDR_SZ`).
const RINGBUF_RECORD_HEADER: u64 = 8;

/// A ring that holds one event per frame of `mem_bytes` of guest RAM: since the programs report
/// a frame at most once per interval, it cannot overflow between two drains. Each record is
/// the event plus the ring's 8-byte header.
pub fn ring_bytes_for(mem_bytes: u64) -> u32 {
    let bytes = (mem_bytes / 4096) * (TOUCH_EVENT_SIZE as u64 + RINGBUF_RECORD_HEADER);
    bytes.clamp(4096, 1 << 30).next_power_of_two() as u32
}

/// Mounts tracefs if it is not mounted.
fn ensure_tracefs() -> Result<(), TraceError> {
    if Path::new(TRACEFS).join("events").is_dir() {
        return Ok(());
    }
    let mount = std::process::Command::new("mount")
        .args(["-t", "tracefs", "nodev", TRACEFS])
        .output()
        .map_err(|e| TraceError::Tracefs(e.to_string()))?;
    // A failed mount is fine if tracefs is there now: another recorder starting at the same
    // moment (tests run several) mounted it first, and `mount` says "already mounted".
    if Path::new(TRACEFS).join("events").is_dir() {
        return Ok(());
    }
    Err(TraceError::Tracefs(format!(
        "mount exited with {}: {}",
        mount.status,
        String::from_utf8_lossy(&mount.stderr).trim()
    )))
}

/// Offset and size of `field` in the tracepoint's format file, if the tracepoint exists.
fn field_layout(category: &str, event: &str, field: &str) -> Option<Option<(usize, usize)>> {
    let format = std::fs::read_to_string(
        Path::new(TRACEFS)
            .join("events")
            .join(category)
            .join(event)
            .join("format"),
    )
    .ok()?;
    let parsed = format.lines().find_map(|line| {
        let line = line.trim();
        let decl = line.strip_prefix("field:")?.split(';').next()?;
        let name = decl.split_whitespace().last()?.trim_start_matches('*');
        if name != field {
            return None;
        }
        let number = |key: &str| -> Option<usize> {
            line.split(';')
                .find_map(|part| part.trim().strip_prefix(key))?
                .trim()
                .parse()
                .ok()
        };
        Some((number("offset:")?, number("size:")?))
    });
    Some(parsed)
}

/// The loaded, attached tracer.
pub struct Tracer {
    // Keeps the programs attached and the maps alive.
    _ebpf: Ebpf,
    events: RingBuf<MapData>,
    counters: PerCpuArray<MapData, u64>,
    logger: Option<aya_log::EbpfLogger<&'static dyn log::Log>>,
    config: Array<MapData, TraceConfig>,
    generation: u32,
    active: Vec<&'static str>,
    drops_seen: u64,
}

impl Tracer {
    /// Loads and attaches the programs for this process's VM of `mem_bytes`, with a ring of
    /// `ring_bytes`.
    pub fn start(mem_bytes: u64, ring_bytes: u32) -> Result<Tracer, TraceError> {
        ensure_tracefs()?;
        let mut present = Vec::new();
        for (program, category, event, fields) in PROGRAMS {
            let mut exists = true;
            for &(f_category, f_event, field, offset, size) in fields.iter() {
                match field_layout(f_category, f_event, field) {
                    None => exists = false,
                    Some(Some((o, s))) if o == offset && s == size => {}
                    Some(found) => {
                        return Err(TraceError::FieldMismatch {
                            category,
                            event,
                            field,
                            found: match found {
                                Some((o, s)) => format!("at offset {o} (size {s})"),
                                None => "missing".to_string(),
                            },
                            offset,
                            size,
                        })
                    }
                }
            }
            if exists {
                present.push((program, category, event));
            }
        }
        if present.is_empty() {
            return Err(TraceError::NoTracepoints);
        }

        let mut ebpf = EbpfLoader::new()
            .map_max_entries(EVENTS_MAP, ring_bytes)
            .map_max_entries(REPORTED_MAP, (mem_bytes / 4096).max(1) as u32)
            .load(EBPF_OBJECT)
            .map_err(load_err)?;
        let logger = match aya_log::EbpfLogger::init(&mut ebpf) {
            Ok(logger) => Some(logger),
            Err(e) => {
                tracing::debug!(error = %e, "the eBPF programs' log is not available");
                None
            }
        };
        let mut active = Vec::new();
        for (program, category, event) in present {
            let tracepoint: &mut TracePoint = ebpf
                .program_mut(program)
                .ok_or_else(|| {
                    TraceError::Load(format!("program {program} missing from the object"))
                })?
                .try_into()
                .map_err(load_err)?;
            tracepoint.load().map_err(load_err)?;
            match tracepoint.attach(category, event) {
                Ok(_) => active.push(program),
                Err(e) => tracing::warn!(%category, %event, error = %e, "tracepoint not attached"),
            }
        }
        if active.is_empty() {
            return Err(TraceError::NoTracepoints);
        }
        let mut config: Array<_, TraceConfig> = Array::try_from(
            ebpf.take_map(CONFIG_MAP)
                .ok_or_else(|| TraceError::Load("map CONFIG missing".into()))?,
        )
        .map_err(load_err)?;
        let generation = 1;
        config
            .set(
                0,
                TraceConfig {
                    tgid: std::process::id(),
                    enabled: 1,
                    generation,
                },
                0,
            )
            .map_err(load_err)?;
        let events = RingBuf::try_from(
            ebpf.take_map(EVENTS_MAP)
                .ok_or_else(|| TraceError::Load("map EVENTS missing".into()))?,
        )
        .map_err(load_err)?;
        let counters = PerCpuArray::try_from(
            ebpf.take_map(COUNTERS_MAP)
                .ok_or_else(|| TraceError::Load("map COUNTERS missing".into()))?,
        )
        .map_err(load_err)?;
        tracing::info!(tracepoints = ?active, "eBPF tracer attached");
        Ok(Tracer {
            _ebpf: ebpf,
            events,
            counters,
            logger,
            config,
            generation,
            active,
            drops_seen: 0,
        })
    }

    /// Names of the attached programs.
    pub fn active(&self) -> &[&'static str] {
        &self.active
    }

    /// Moves every event in the ring into `frames` (first-touch order, without repeats), starts
    /// the next interval's generation (so every frame is reported once again), and returns how
    /// many events were lost since the last call. Call it while the guest is paused.
    pub fn drain(&mut self, frames: &mut Vec<u64>) -> Result<u64, TraceError> {
        // The programs report a frame once per interval; this only guards against the rare
        // double report of a lost race on the generation array.
        let mut seen = HashSet::new();
        while let Some(item) = self.events.next() {
            let Ok((event, _)) = TouchEvent::read_from_prefix(&item) else {
                continue;
            };
            if Source::from_raw(event.source).is_some() && seen.insert(event.gfn) {
                frames.push(event.gfn);
            }
        }
        if let Some(logger) = &mut self.logger {
            logger.flush();
        }
        let drops: u64 = self
            .counters
            .get(&(Counter::Drops as u32), 0)
            .map(|per_cpu| per_cpu.iter().sum())
            .unwrap_or(0);
        let new = drops.saturating_sub(self.drops_seen);
        self.drops_seen = drops;
        self.generation = self.generation.wrapping_add(1).max(1);
        self.config
            .set(
                0,
                TraceConfig {
                    tgid: std::process::id(),
                    enabled: 1,
                    generation: self.generation,
                },
                0,
            )
            .map_err(load_err)?;
        Ok(new)
    }
}
