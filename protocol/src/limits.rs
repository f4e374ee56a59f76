//! Default limits shared by every side of the protocol.

/// Largest frame the coordinator and peers accept by default: room for a full physics
/// snapshot of 10,000 bodies (about 350 bytes of JSON each) with a wide margin.
pub const DEFAULT_MAX_FRAME_BYTES: usize = 16 * 1024 * 1024;

/// Default per-attempt deadline of a task, when the request carries no `deadline_ms`.
pub const DEFAULT_TASK_DEADLINE_MS: u64 = 2_000;

/// Largest `deadline_ms` a request may ask for.
pub const MAX_TASK_DEADLINE_MS: u64 = 600_000;

/// Most bodies a physics session may hold on a peer.
pub const MAX_BODIES_PER_SESSION: usize = 50_000;

/// Most simulation steps one `physics_step` request may ask for.
pub const MAX_STEPS_PER_TICK: u32 = 64;

/// Most cells a navigation grid may have.
pub const MAX_GRID_CELLS: usize = 1_000_000;

/// Most agents one `ai_navigate` request may carry.
pub const MAX_AGENTS_PER_REQUEST: usize = 10_000;

/// Longest id (peer, gamer, task, session) accepted, in bytes.
pub const MAX_ID_BYTES: usize = 256;

/// Most task types a peer may declare in its capabilities (each an id of at most
/// [`MAX_ID_BYTES`]).
pub const MAX_TASK_TYPES_PER_PEER: usize = 32;
