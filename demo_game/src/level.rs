//! The level file: static geometry, stacks of bodies, NPC spawns and targets, and the
//! navigation grid, loaded from JSON in `assets/levels/` so a level can be edited without
//! recompiling.
//!
//! Coordinates are metres, Y up. The navigation grid covers the XZ plane: row `r`, column
//! `c` is the cell whose corner is `origin + (c, r) * cell_size` (`origin` is `[x, z]`), `.`
//! is walkable and `#` is blocked, which is exactly the wire format of
//! [`p2c2r_protocol::ai::NavGrid`].

use std::path::{Path, PathBuf};

use bevy::prelude::*;
use serde::{Deserialize, Serialize};

/// The level that ships with the demo, relative to the workspace's `assets/` folder.
pub const DEFAULT_LEVEL: &str = "levels/arena.json";

/// A whole level, as stored in the level file.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, Resource)]
pub struct Level {
    /// Display name.
    pub name: String,
    /// One sentence about the level.
    #[serde(default)]
    pub description: String,
    /// Gravity in m/s².
    #[serde(default = "default_gravity")]
    pub gravity: [f32; 3],
    /// Ambient light brightness (cd/m²).
    #[serde(default = "default_ambient")]
    pub ambient_light: f32,
    /// The directional "sun".
    #[serde(default)]
    pub sun: Sun,
    /// Where the camera starts.
    #[serde(default)]
    pub camera: CameraStart,
    /// Fixed geometry: ground, walls, ramps.
    pub r#static: Vec<StaticBox>,
    /// Towers, pyramids and piles of dynamic bodies.
    #[serde(default)]
    pub stacks: Vec<Stack>,
    /// NPC agents.
    pub agents: Agents,
    /// The navigation grid the agents' pathfinding runs on.
    pub nav_grid: NavGridDef,
    /// The physics playground beside the arena (see [`crate::playground`]), if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub playground: Option<crate::playground::PlaygroundDef>,
    /// The player's course (none: no player).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub player: Option<crate::player::PlayerDef>,
}

fn default_gravity() -> [f32; 3] {
    [0.0, -9.81, 0.0]
}

fn default_ambient() -> f32 {
    400.0
}

/// The level's directional light.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Sun {
    /// Direction the light travels in.
    pub direction: [f32; 3],
    /// Illuminance in lux.
    pub illuminance: f32,
}

impl Default for Sun {
    fn default() -> Self {
        Sun { direction: [-0.5, -1.0, -0.35], illuminance: 9000.0 }
    }
}

/// The camera's starting orbit.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct CameraStart {
    /// The point the camera orbits and looks at.
    pub focus: [f32; 3],
    /// Distance from the focus, metres.
    pub distance: f32,
    /// Heading in degrees (0 looks along -Z).
    pub yaw_deg: f32,
    /// Elevation in degrees (negative looks down).
    pub pitch_deg: f32,
}

impl Default for CameraStart {
    fn default() -> Self {
        CameraStart { focus: [0.0, 1.0, 0.0], distance: 38.0, yaw_deg: 35.0, pitch_deg: -38.0 }
    }
}

/// What a piece of static geometry is; it decides how the arena draws it and whether it
/// must be blocked on the navigation grid.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum StaticKind {
    /// The floor; agents walk on it.
    Ground,
    /// A wall: an obstacle for agents.
    Wall,
    /// A ramp: balls roll up it; an obstacle for agents.
    Ramp,
}

/// A fixed box: the ground, a wall or a ramp.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct StaticBox {
    /// Display name.
    pub name: String,
    /// What it is.
    pub kind: StaticKind,
    /// Centre of the box.
    pub center: [f32; 3],
    /// Half the box's size along its own axes.
    pub half_extents: [f32; 3],
    /// Linear sRGB colour, each channel 0..1.
    pub color: [f32; 3],
    /// Rotation as XYZ Euler angles in degrees.
    #[serde(default)]
    pub rotation_deg: [f32; 3],
}

impl StaticBox {
    /// The box's rotation.
    pub fn rotation(&self) -> Quat {
        let [x, y, z] = self.rotation_deg.map(f32::to_radians);
        Quat::from_euler(EulerRot::XYZ, x, y, z)
    }

    /// The box's transform (a unit cube scaled by this gives the box).
    pub fn transform(&self) -> Transform {
        Transform::from_translation(Vec3::from(self.center)).with_rotation(self.rotation())
    }

    /// The axis-aligned XZ rectangle `(min, max)` that contains the box's footprint.
    pub fn footprint(&self) -> (Vec2, Vec2) {
        let rot = self.rotation();
        let h = Vec3::from(self.half_extents);
        let mut min = Vec2::splat(f32::INFINITY);
        let mut max = Vec2::splat(f32::NEG_INFINITY);
        for sx in [-1.0, 1.0] {
            for sy in [-1.0, 1.0] {
                for sz in [-1.0, 1.0] {
                    let p = Vec3::from(self.center) + rot * (h * Vec3::new(sx, sy, sz));
                    min = min.min(p.xz());
                    max = max.max(p.xz());
                }
            }
        }
        (min, max)
    }
}

/// How a stack arranges its bodies.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum StackKind {
    /// `layers` layers of `columns[0] × columns[1]` boxes.
    Tower,
    /// Layers of boxes, each one box smaller on both axes than the one below.
    Pyramid,
    /// Layers of spheres, slightly jittered, dropped into place.
    SpherePile,
}

/// A group of dynamic bodies placed together.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Stack {
    /// How the bodies are arranged.
    pub kind: StackKind,
    /// Display name.
    #[serde(default)]
    pub name: String,
    /// Centre of the stack's base on the ground, `[x, z]`.
    pub base: [f32; 2],
    /// Bodies along X and Z in the bottom layer.
    pub columns: [u32; 2],
    /// Number of layers.
    pub layers: u32,
    /// Half the edge of a box (towers, pyramids).
    #[serde(default = "default_box_half")]
    pub box_half: f32,
    /// Sphere radius (sphere piles).
    #[serde(default = "default_radius")]
    pub radius: f32,
    /// Linear sRGB colour, each channel 0..1.
    pub color: [f32; 3],
}

fn default_box_half() -> f32 {
    0.3
}

fn default_radius() -> f32 {
    0.3
}

/// The shape of one body a stack places.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum BodyShape {
    /// A box with these half extents.
    Box(Vec3),
    /// A sphere with this radius.
    Sphere(f32),
    /// An upright capsule: radius, and half the height of its cylindrical part.
    Capsule(f32, f32),
}

impl Stack {
    /// Where each body of the stack starts, and its shape. Deterministic.
    pub fn bodies(&self) -> Vec<(Vec3, BodyShape)> {
        let base = Vec3::new(self.base[0], 0.0, self.base[1]);
        let mut out = Vec::new();
        match self.kind {
            StackKind::Tower | StackKind::Pyramid => {
                let h = self.box_half;
                // A small gap so the boxes do not start interpenetrating.
                let pitch = 2.0 * h + 0.01;
                for layer in 0..self.layers {
                    let shrink = if self.kind == StackKind::Pyramid { layer } else { 0 };
                    let nx = self.columns[0].saturating_sub(shrink);
                    let nz = self.columns[1].saturating_sub(shrink);
                    if nx == 0 || nz == 0 {
                        break;
                    }
                    let y = h + 0.005 + layer as f32 * (2.0 * h + 0.005);
                    for i in 0..nx {
                        for k in 0..nz {
                            let x = (i as f32 - (nx - 1) as f32 / 2.0) * pitch;
                            let z = (k as f32 - (nz - 1) as f32 / 2.0) * pitch;
                            out.push((base + Vec3::new(x, y, z), BodyShape::Box(Vec3::splat(h))));
                        }
                    }
                }
            }
            StackKind::SpherePile => {
                let r = self.radius;
                let pitch = 2.0 * r + 0.05;
                let [nx, nz] = self.columns;
                for layer in 0..self.layers {
                    let y = r + 0.3 + layer as f32 * (pitch + 0.2);
                    for i in 0..nx {
                        for k in 0..nz {
                            // Deterministic jitter so the pile settles into a heap, not a lattice.
                            let j = ((i * 7 + k * 13 + layer * 29) % 11) as f32 / 11.0 - 0.5;
                            let x = (i as f32 - (nx - 1) as f32 / 2.0) * pitch + 0.04 * j;
                            let z = (k as f32 - (nz - 1) as f32 / 2.0) * pitch - 0.04 * j;
                            out.push((base + Vec3::new(x, y, z), BodyShape::Sphere(r)));
                        }
                    }
                }
            }
        }
        out
    }
}

/// NPC settings: where they start and the targets they walk between.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Agents {
    /// Walking speed, m/s.
    pub speed: f32,
    /// Radius of an agent's capsule.
    pub radius: f32,
    /// Total height of an agent's capsule.
    pub height: f32,
    /// Linear sRGB colour, each channel 0..1.
    pub color: [f32; 3],
    /// One agent starts at each spawn point, `[x, z]`.
    pub spawns: Vec<[f32; 2]>,
    /// Targets, `[x, z]`; agent `i` starts at target `i`, and walks to the next when it arrives.
    pub targets: Vec<[f32; 2]>,
}

/// The navigation grid as stored in the level file.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct NavGridDef {
    /// Edge of a square cell, metres.
    pub cell_size: f32,
    /// World `[x, z]` of the corner of cell (row 0, column 0).
    pub origin: [f32; 2],
    /// One string per row (increasing Z), one char per column (increasing X): `.` walkable, `#` blocked.
    pub rows: Vec<String>,
}

impl NavGridDef {
    /// Number of columns (X).
    pub fn width(&self) -> usize {
        self.rows.first().map_or(0, |r| r.len())
    }

    /// Number of rows (Z).
    pub fn height(&self) -> usize {
        self.rows.len()
    }

    /// The `(row, column)` of the cell containing world point `(x, z)`, if inside the grid.
    pub fn cell_of(&self, x: f32, z: f32) -> Option<(usize, usize)> {
        let c = ((x - self.origin[0]) / self.cell_size).floor();
        let r = ((z - self.origin[1]) / self.cell_size).floor();
        if c < 0.0 || r < 0.0 {
            return None;
        }
        let (r, c) = (r as usize, c as usize);
        (r < self.height() && c < self.width()).then_some((r, c))
    }

    /// Whether the cell containing world point `(x, z)` is walkable.
    pub fn walkable(&self, x: f32, z: f32) -> bool {
        self.cell_of(x, z).is_some_and(|(r, c)| self.rows[r].as_bytes()[c] == b'.')
    }

    /// The grid in the protocol's wire form.
    pub fn to_protocol(&self) -> p2c2r_protocol::ai::NavGrid {
        p2c2r_protocol::ai::NavGrid { cell_size: self.cell_size, origin: self.origin, rows: self.rows.clone() }
    }
}

/// Why a level could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum LevelError {
    /// The file could not be read.
    #[error("cannot read level {path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
    /// The file is not valid level JSON.
    #[error("level {path} is not valid: {source}")]
    Parse {
        /// The file.
        path: PathBuf,
        /// The JSON error.
        source: serde_json::Error,
    },
    /// The level parsed but is inconsistent.
    #[error("level {path}: {reason}")]
    Invalid {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        reason: String,
    },
}

impl Level {
    /// Reads, parses and validates a level file.
    pub fn load(path: &Path) -> Result<Level, LevelError> {
        let text = std::fs::read_to_string(path).map_err(|source| LevelError::Io { path: path.to_owned(), source })?;
        let level: Level =
            serde_json::from_str(&text).map_err(|source| LevelError::Parse { path: path.to_owned(), source })?;
        level.validate().map_err(|reason| LevelError::Invalid { path: path.to_owned(), reason })?;
        Ok(level)
    }

    /// Checks the things serde cannot: sizes, grid shape, and that every spawn and target
    /// is on a walkable cell.
    pub fn validate(&self) -> Result<(), String> {
        let g = &self.nav_grid;
        if !(g.cell_size > 0.0 && g.cell_size.is_finite()) {
            return Err(format!("nav_grid.cell_size must be > 0, got {}", g.cell_size));
        }
        if g.rows.is_empty() || g.width() == 0 {
            return Err("nav_grid.rows is empty".into());
        }
        if g.width() * g.height() > p2c2r_protocol::limits::MAX_GRID_CELLS {
            return Err("nav_grid has more cells than the protocol allows".into());
        }
        for (i, row) in g.rows.iter().enumerate() {
            if row.len() != g.width() {
                return Err(format!("nav_grid row {i} has {} cells, row 0 has {}", row.len(), g.width()));
            }
            if let Some(ch) = row.chars().find(|ch| *ch != '.' && *ch != '#') {
                return Err(format!("nav_grid row {i} has {ch:?}; use '.' (walkable) or '#' (blocked)"));
            }
        }
        for s in &self.r#static {
            if s.half_extents.iter().any(|h| !(*h > 0.0 && h.is_finite())) {
                return Err(format!("static {:?} has a non-positive half extent", s.name));
            }
        }
        for s in &self.stacks {
            let size = if s.kind == StackKind::SpherePile { s.radius } else { s.box_half };
            if !(size > 0.0 && size.is_finite()) || s.layers == 0 || s.columns.contains(&0) {
                return Err(format!("stack {:?} is empty or has a non-positive size", s.name));
            }
        }
        let a = &self.agents;
        if !(a.speed > 0.0 && a.radius > 0.0 && a.height > 2.0 * a.radius) {
            return Err("agents need speed > 0, radius > 0 and height > 2 * radius".into());
        }
        if !a.spawns.is_empty() && a.targets.is_empty() {
            return Err("agents have spawns but no targets".into());
        }
        for (what, points) in [("spawn", &a.spawns), ("target", &a.targets)] {
            for [x, z] in points {
                if !g.walkable(*x, *z) {
                    return Err(format!("agent {what} ({x}, {z}) is not on a walkable nav_grid cell"));
                }
            }
        }
        Ok(())
    }

    /// Total number of dynamic bodies the stacks place.
    pub fn stack_body_count(&self) -> usize {
        self.stacks.iter().map(|s| s.bodies().len()).sum()
    }
}

/// Finds the workspace's `assets/` folder: `$P2C2R_ASSETS` if set, else `assets/` next to
/// the current directory or one of its parents, else the one this crate was built from.
pub fn assets_dir() -> PathBuf {
    if let Some(dir) = std::env::var_os("P2C2R_ASSETS") {
        return PathBuf::from(dir);
    }
    if let Ok(cwd) = std::env::current_dir() {
        for dir in cwd.ancestors() {
            let candidate = dir.join("assets").join(DEFAULT_LEVEL);
            if candidate.is_file() {
                return dir.join("assets");
            }
        }
    }
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..").join("assets")
}

/// Resolves a `--level` argument: an existing path as given, else relative to [`assets_dir`].
pub fn resolve_level_path(arg: &str) -> PathBuf {
    let p = PathBuf::from(arg);
    if p.is_file() { p } else { assets_dir().join(arg) }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn shipped() -> Level {
        Level::load(&assets_dir().join(DEFAULT_LEVEL)).expect("the shipped level loads")
    }

    #[test]
    fn shipped_level_loads_and_has_a_few_hundred_bodies() {
        let level = shipped();
        let n = level.stack_body_count();
        assert!((200..=600).contains(&n), "{n} bodies");
        assert!(level.r#static.iter().any(|s| s.kind == StaticKind::Ground));
        assert!(level.r#static.iter().any(|s| s.kind == StaticKind::Wall));
        assert!(level.r#static.iter().any(|s| s.kind == StaticKind::Ramp));
        assert!(level.agents.spawns.len() >= 4);
        assert!(level.stacks.iter().any(|s| s.kind == StackKind::SpherePile));
    }

    #[test]
    fn walls_and_ramps_are_blocked_on_the_nav_grid() {
        let level = shipped();
        let g = &level.nav_grid;
        for s in level.r#static.iter().filter(|s| s.kind != StaticKind::Ground) {
            let (min, max) = s.footprint();
            // Every cell centre inside the footprint must be blocked.
            for r in 0..g.height() {
                for c in 0..g.width() {
                    let x = g.origin[0] + (c as f32 + 0.5) * g.cell_size;
                    let z = g.origin[1] + (r as f32 + 0.5) * g.cell_size;
                    if x > min.x && x < max.x && z > min.y && z < max.y {
                        assert_eq!(g.rows[r].as_bytes()[c], b'#', "{} at cell ({r}, {c})", s.name);
                    }
                }
            }
        }
    }

    #[test]
    fn bad_grids_and_spawns_are_rejected() {
        let mut level = shipped();
        level.nav_grid.rows[3].push('.');
        assert!(level.validate().unwrap_err().contains("row 3"));

        let mut level = shipped();
        level.nav_grid.rows[5] = level.nav_grid.rows[5].replace('.', "x");
        assert!(level.validate().unwrap_err().contains("'x'"));

        let mut level = shipped();
        level.agents.spawns.push([0.0, -20.0]);
        assert!(level.validate().unwrap_err().contains("spawn"));
    }

    #[test]
    fn stacks_do_not_start_interpenetrating() {
        for stack in shipped().stacks {
            let bodies = stack.bodies();
            for (i, (a, sa)) in bodies.iter().enumerate() {
                for (b, sb) in &bodies[i + 1..] {
                    let (ra, rb) = match (sa, sb) {
                        (BodyShape::Box(h), BodyShape::Box(_)) => (h.x, h.x),
                        (BodyShape::Sphere(r), BodyShape::Sphere(_)) => (*r, *r),
                        _ => panic!("stacks are one shape"),
                    };
                    let d = (*a - *b).abs();
                    assert!(d.max_element() >= ra + rb - 1e-4, "{}: {a} and {b} overlap", stack.name);
                }
            }
        }
    }

    #[test]
    fn cell_lookup_matches_the_wire_convention() {
        let g = NavGridDef { cell_size: 2.0, origin: [-4.0, 10.0], rows: vec!["..#".into(), "#..".into()] };
        assert_eq!(g.cell_of(-4.0, 10.0), Some((0, 0)));
        assert_eq!(g.cell_of(1.9, 10.5), Some((0, 2)));
        assert_eq!(g.cell_of(-3.0, 12.5), Some((1, 0)));
        assert!(!g.walkable(1.0, 11.0));
        assert!(g.walkable(-1.0, 13.0));
        assert_eq!(g.cell_of(-4.1, 10.0), None);
        assert_eq!(g.cell_of(0.0, 14.0), None);
    }
}
