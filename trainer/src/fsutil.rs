//! Files that must never be left half-written: written to a temporary file in the same
//! folder, flushed to disk, then renamed over the target (atomic on POSIX file systems). A crash
//! at any point leaves either the previous file or the new one, never a mix; a full disk is an
//! error naming the file, and the previous file stays.

use std::io::Write;
use std::path::Path;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::OnceLock;

/// Fault injection for the crash-safety test: with `DINO_CRASH_AT=N` the process aborts at the
/// N-th step of its atomic writes (counted from 1 over the whole process; five steps per file:
/// temp file created, half written, all written, synced, renamed). Unset: no effect.
fn crash_point() {
    static AT: OnceLock<Option<usize>> = OnceLock::new();
    static COUNT: AtomicUsize = AtomicUsize::new(0);
    if let Some(at) = *AT.get_or_init(|| std::env::var("DINO_CRASH_AT").ok().and_then(|v| v.parse().ok())) {
        if COUNT.fetch_add(1, Ordering::SeqCst) + 1 == at {
            std::process::abort();
        }
    }
}

/// Write `bytes` to `path` atomically (temporary file, fsync, rename, fsync of the folder).
///
/// # Errors
/// The folder cannot be created or the file cannot be written (full disk, permissions): one
/// line naming `path`; the previous content of `path` is unchanged.
pub fn write_atomically(path: &Path, bytes: &[u8]) -> anyhow::Result<()> {
    let dir = path.parent().filter(|p| !p.as_os_str().is_empty()).unwrap_or(Path::new("."));
    std::fs::create_dir_all(dir).map_err(|e| anyhow::anyhow!("{}: cannot create: {e}", dir.display()))?;
    let name = path.file_name().and_then(|n| n.to_str()).unwrap_or("file");
    let tmp = dir.join(format!(".{name}.tmp{}", std::process::id()));
    let result = (|| -> std::io::Result<()> {
        let mut f = std::fs::File::create(&tmp)?;
        crash_point();
        let (first, second) = bytes.split_at(bytes.len() / 2);
        f.write_all(first)?;
        crash_point();
        f.write_all(second)?;
        crash_point();
        f.sync_all()?;
        crash_point();
        std::fs::rename(&tmp, path)?;
        crash_point();
        // Persist the rename itself.
        if let Ok(d) = std::fs::File::open(dir) {
            let _ = d.sync_all();
        }
        Ok(())
    })();
    if let Err(e) = result {
        let _ = std::fs::remove_file(&tmp);
        anyhow::bail!("{}: cannot write: {e}", path.display());
    }
    Ok(())
}
