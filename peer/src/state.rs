//! The peer's state file: the resume secret of its latest registration, kept across
//! restarts, so that a peer restarted under its own id (a reboot, a service manager
//! restarting it) proves the id is its own and takes it back at once, instead of being
//! refused `id_in_use` while the coordinator still reserves the id for the process that
//! died.
//!
//! The file is small JSON (`{"peer_id": …, "resume_secret": …}`), written whole to a
//! temporary file created with mode 0600 and renamed over the old one, so it is never
//! readable by other users and never half-written. A file that is missing, unreadable,
//! larger than [`MAX_STATE_BYTES`], malformed or kept for another id is ignored (logged):
//! the peer registers without a secret, as a new process would.

use std::io::Write;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

/// The largest state file read.
pub const MAX_STATE_BYTES: u64 = 4096;

#[derive(Serialize, Deserialize)]
struct State {
    peer_id: String,
    resume_secret: String,
}

/// The resume secret kept in `path` for `peer_id`, if there is a valid one.
pub fn load(path: &Path, peer_id: &str) -> Option<String> {
    let read = || -> Result<Option<String>, String> {
        let file = match std::fs::File::open(path) {
            Ok(file) => file,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(e.to_string()),
        };
        let mut text = String::new();
        std::io::Read::read_to_string(&mut std::io::Read::take(file, MAX_STATE_BYTES + 1), &mut text)
            .map_err(|e| e.to_string())?;
        if text.len() as u64 > MAX_STATE_BYTES {
            return Err(format!("larger than {MAX_STATE_BYTES} bytes"));
        }
        let state: State = serde_json::from_str(&text).map_err(|e| e.to_string())?;
        Ok((state.peer_id == peer_id).then_some(state.resume_secret))
    };
    match read() {
        Ok(secret) => secret,
        Err(e) => {
            tracing::warn!(path = %path.display(), "ignoring the peer's state file: {e}");
            None
        }
    }
}

/// Keeps `secret` as `peer_id`'s resume secret in `path` (creating its folder).
pub fn save(path: &Path, peer_id: &str, secret: &str) -> std::io::Result<()> {
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        let mut builder = std::fs::DirBuilder::new();
        builder.recursive(true);
        #[cfg(unix)]
        std::os::unix::fs::DirBuilderExt::mode(&mut builder, 0o700);
        builder.create(dir)?;
    }
    let text = serde_json::to_string(&State { peer_id: peer_id.to_owned(), resume_secret: secret.to_owned() })
        .map_err(std::io::Error::other)?;
    // A fresh, unguessable name created exclusively: nothing planted there beforehand (a
    // symlink, a file readable by others) is followed or reused.
    let mut temp = path.as_os_str().to_owned();
    temp.push(format!(".{}.tmp", uuid::Uuid::new_v4().simple()));
    let temp = PathBuf::from(temp);
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
    let written = options.open(&temp).and_then(|mut file| {
        file.write_all(text.as_bytes())?;
        file.sync_all()
    });
    if let Err(e) = written.and_then(|()| std::fs::rename(&temp, path)) {
        let _ = std::fs::remove_file(&temp);
        return Err(e);
    }
    Ok(())
}

/// Where the `peer` binary keeps the state of `peer_id` when no `--state-file` is given:
/// `$XDG_STATE_HOME/p2c2r/peer-<id>.json` (or `~/.local/state/…`); `None` without either
/// variable, or for an id that is not safe as a file name.
pub fn default_path(peer_id: &str) -> Option<PathBuf> {
    let safe = !peer_id.is_empty()
        && peer_id.len() <= 128
        && peer_id.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
        && !peer_id.starts_with('.');
    if !safe {
        return None;
    }
    let base = std::env::var_os("XDG_STATE_HOME").filter(|v| !v.is_empty()).map(PathBuf::from).or_else(|| {
        std::env::var_os("HOME").filter(|v| !v.is_empty()).map(|h| PathBuf::from(h).join(".local/state"))
    })?;
    Some(base.join("p2c2r").join(format!("peer-{peer_id}.json")))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn temp(name: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!("p2c2r-peer-state-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        dir.join("nested").join("peer.json")
    }

    #[test]
    fn a_saved_secret_comes_back_for_its_own_id_only_and_the_file_is_private() {
        let path = temp("roundtrip");
        assert_eq!(load(&path, "p1"), None, "no file yet");
        save(&path, "p1", "s3cret").unwrap();
        assert_eq!(load(&path, "p1").as_deref(), Some("s3cret"));
        assert_eq!(load(&path, "p2"), None, "kept for another id");
        save(&path, "p1", "newer").unwrap();
        assert_eq!(load(&path, "p1").as_deref(), Some("newer"));
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            assert_eq!(std::fs::metadata(&path).unwrap().permissions().mode() & 0o777, 0o600);
        }
        let _ = std::fs::remove_dir_all(path.parent().unwrap().parent().unwrap());
    }

    #[test]
    fn a_garbled_or_huge_file_is_ignored() {
        let path = temp("garbled");
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(&path, "{not json").unwrap();
        assert_eq!(load(&path, "p1"), None);
        let huge = format!(r#"{{"peer_id":"p1","resume_secret":"{}"}}"#, "x".repeat(10_000));
        std::fs::write(&path, huge).unwrap();
        assert_eq!(load(&path, "p1"), None);
        let _ = std::fs::remove_dir_all(path.parent().unwrap().parent().unwrap());
    }

    #[test]
    fn the_default_path_needs_a_safe_id() {
        assert_eq!(default_path("../etc/passwd"), None);
        assert_eq!(default_path(".hidden"), None);
        assert_eq!(default_path(""), None);
        if let Some(path) = default_path("peer-7") {
            assert!(path.ends_with("p2c2r/peer-peer-7.json"), "{}", path.display());
        }
    }
}
