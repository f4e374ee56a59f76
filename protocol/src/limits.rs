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

/// Most engine features a peer's determinism setup may list.
pub const MAX_DETERMINISM_FEATURES: usize = 16;

/// Most task types a peer may declare in its capabilities (each an id of at most
/// [`MAX_ID_BYTES`]).
pub const MAX_TASK_TYPES_PER_PEER: usize = 32;

// What a physics or navigation request may contain. A peer refuses a request outside
// these bounds (`invalid_payload`), and the Bevy plugin clamps what it sends to them, so
// they are part of the wire contract, not of one engine.

/// Largest accepted `dt` of a `physics_step`, in seconds.
pub const MAX_DT: f32 = 1.0;
/// Largest accepted absolute coordinate of a position, in metres (bodies and agents).
pub const MAX_COORDINATE: f32 = 1.0e6;
/// Largest accepted absolute component of a body's velocity (m/s or rad/s).
pub const MAX_SPEED: f32 = 1.0e5;
/// Largest accepted absolute component of a force, torque or impulse.
pub const MAX_FORCE: f32 = 1.0e12;
/// Largest accepted absolute component of gravity, m/s².
pub const MAX_GRAVITY: f32 = 1.0e4;
/// Smallest and largest accepted half extent or radius of a body's shape, in metres.
pub const SHAPE_EXTENT_RANGE: (f32, f32) = (1.0e-4, 1.0e4);
/// Smallest and largest accepted mass (kg) or density (kg/m³).
pub const MASS_RANGE: (f32, f32) = (1.0e-6, 1.0e9);
/// Largest accepted friction coefficient, restitution or damping.
pub const MAX_MATERIAL: f32 = 1.0e3;
/// Largest accepted agent radius, in metres.
pub const MAX_AGENT_RADIUS: f32 = 100.0;
/// Largest accepted agent speed, m/s.
pub const MAX_AGENT_SPEED: f32 = 1.0e4;

// Shapes made of many parts: each bounded on its own, and all of a request's together, so
// that building them stays within a tick's work (a 100,000-triangle level mesh builds in
// tens of milliseconds; the bounds are a few times that).

/// Most points of a convex hull.
pub const MAX_HULL_POINTS: usize = 4_096;
/// Most convex hull points in one request's added bodies together (computing hulls is the
/// costliest building).
pub const MAX_HULL_POINTS_PER_REQUEST: usize = 65_536;
/// Most vertices of a triangle mesh.
pub const MAX_MESH_VERTICES: usize = 262_144;
/// Most triangles of a triangle mesh.
pub const MAX_MESH_TRIANGLES: usize = 262_144;
/// Most cells (rows × columns of heights) of a heightfield.
pub const MAX_HEIGHTFIELD_CELLS: usize = 1_048_576;
/// Most parts of a compound shape.
pub const MAX_COMPOUND_PARTS: usize = 256;
/// Most shape elements (hull points, mesh vertices and triangles, heightfield cells,
/// compound parts) in one request's added bodies together.
pub const MAX_SHAPE_ELEMENTS_PER_REQUEST: usize = 2_097_152;
/// Largest accepted absolute gravity scale of a body.
pub const MAX_GRAVITY_SCALE: f32 = 1.0e3;
/// Most joints a physics session may hold on a peer.
pub const MAX_JOINTS_PER_SESSION: usize = 50_000;
/// Most events one physics tick may raise (a tick raising more is refused and the
/// session dropped: ask fewer bodies for events).
pub const MAX_EVENTS_PER_TICK: usize = 200_000;
/// Most touching pairs a snapshot may carry.
pub const MAX_TOUCHING_PAIRS: usize = 200_000;
/// Fewest elements ([`crate::physics::Shape::elements`]) of a shape a world keeps in its
/// shape cache: smaller shapes cost less to send than to look up.
pub const MIN_CACHED_SHAPE_ELEMENTS: usize = 256;
