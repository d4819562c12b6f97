//! Per-call resource limits: a linear-memory cap whose breach is remembered,
//! so the host can answer RESOURCE_EXHAUSTED rather than a bare trap; and
//! the bound on a plugin's error message (`crate::text` makes it safe).

use wasmtime::ResourceLimiter;

/// Longest plugin error message passed on (as a gRPC status or a log
/// line), in bytes; a 16 MiB message in the trailers makes clients refuse
/// the whole answer.
pub const MAX_ERROR_MESSAGE: usize = 1024;

/// Tables are small in practice; this only stops a runaway.
const MAX_TABLE_ELEMENTS: usize = 1 << 20;

#[derive(Debug)]
pub struct MemoryLimiter {
    max_bytes: usize,
    /// Largest size any memory of this call reached.
    pub high_water: usize,
    /// Set when the plugin tried to grow past `max_bytes`.
    pub exhausted: bool,
}

impl MemoryLimiter {
    pub fn new(max_bytes: u64) -> Self {
        MemoryLimiter {
            max_bytes: usize::try_from(max_bytes).unwrap_or(usize::MAX),
            high_water: 0,
            exhausted: false,
        }
    }
}

impl ResourceLimiter for MemoryLimiter {
    fn memory_growing(
        &mut self,
        _current: usize,
        desired: usize,
        _maximum: Option<usize>,
    ) -> wasmtime::Result<bool> {
        if desired > self.max_bytes {
            self.exhausted = true;
            // An error (not `false`) traps at once: a guest allocator that
            // sees a failed grow would just abort with a less clear message.
            return Err(wasmtime::Error::msg(format!(
                "plugin memory limit of {} bytes reached (wanted {desired}; the limit is limits.memoryBytes)",
                self.max_bytes
            )));
        }
        self.high_water = self.high_water.max(desired);
        Ok(true)
    }

    fn table_growing(
        &mut self,
        _current: usize,
        desired: usize,
        _maximum: Option<usize>,
    ) -> wasmtime::Result<bool> {
        Ok(desired <= MAX_TABLE_ELEMENTS)
    }
}
