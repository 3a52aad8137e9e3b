//! The engine's view of cold storage: versions that are no longer held in memory.
//!
//! The engine keeps only the newest versions of each pointer hot; an as-of read further back
//! asks the [`ColdStore`]. The fjall store implements it; the engine never sees fjall.

use super::error::StorageError;
use super::pointer::VersionRec;

/// Read access to every committed version, including those evicted from memory.
pub trait ColdStore: Send + Sync + 'static {
    /// The newest version of `ptr` at or below `at`, if any.
    fn version_at(&self, ptr: &str, at: u64) -> Result<Option<VersionRec>, StorageError>;
}
