//! A resource limiter enforcing `limits.memory` as a total over all linear memories of one
//! instance (`StoreLimits` would apply it to each memory separately).

use wasmtime::ResourceLimiter;

/// Most table elements one table may grow to.
const MAX_TABLE_ELEMENTS: usize = 1 << 20;

#[derive(Debug)]
pub(crate) struct MemoryLimiter {
    limit: usize,
    used: usize,
    exceeded: bool,
}

impl MemoryLimiter {
    pub(crate) fn new(limit: usize) -> Self {
        MemoryLimiter {
            limit,
            used: 0,
            exceeded: false,
        }
    }

    /// Whether a growth (or an initial memory) was refused because of the limit.
    pub(crate) fn exceeded(&self) -> bool {
        self.exceeded
    }
}

impl ResourceLimiter for MemoryLimiter {
    fn memory_growing(
        &mut self,
        current: usize,
        desired: usize,
        _maximum: Option<usize>,
    ) -> wasmtime::Result<bool> {
        let growth = desired.saturating_sub(current);
        match self.used.checked_add(growth) {
            Some(total) if total <= self.limit => {
                self.used = total;
                Ok(true)
            }
            _ => {
                // `memory.grow` returns -1: a guest may recover. When it does not (it traps,
                // aborts, exits non-zero or spins until the deadline), the outcome is reported
                // as "memory limit exceeded".
                self.exceeded = true;
                Ok(false)
            }
        }
    }

    fn memory_grow_failed(&mut self, _error: wasmtime::Error) -> wasmtime::Result<()> {
        Ok(())
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn total_over_memories() -> wasmtime::Result<()> {
        let mut l = MemoryLimiter::new(10);
        assert!(l.memory_growing(0, 6, None)?);
        assert!(!l.memory_growing(0, 6, None)?);
        assert!(l.exceeded());
        assert!(l.memory_growing(6, 10, None)?);
        Ok(())
    }
}
