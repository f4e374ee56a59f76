//! Large shapes kept across snapshots, named by their content.
//!
//! A level mesh or a terrain is megabytes on the wire and milliseconds to build. A world
//! stepped with a [`ShapeCache`] ([`crate::physics::PhysicsWorld::step_cached`]) keeps
//! every shape of at least [`limits::MIN_CACHED_SHAPE_ELEMENTS`] elements it is sent,
//! built, under the SHA-256 of its packed encoding ([`ShapeHash::of`], computed here from
//! the content: a sender cannot make a name stand for other content), and accepts
//! [`Shape::Cached`] for it in later requests: a resync, or a failover to a peer that
//! held the shape for this or any other session, sends 40 bytes instead of the mesh.
//!
//! The cache is bounded by bytes (each shape costs its elements × [`BYTES_PER_ELEMENT`])
//! and forgets the least recently used shape first; the shapes one owner (a gamer) put in
//! hold at most a quarter of it ([`ShapeCache::insert_for`]), so no gamer can flush the
//! others' shapes on its own. Forgetting costs a resend, never a wrong world: a reference to a shape the cache lacks is answered `missing_shape` and
//! the gamer sends the shape itself. A world keeps its own handle on the shapes its
//! bodies use (they are charged to its session like any shape), so forgetting one does
//! not change a running world either.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

use p2c2r_protocol::physics::{Shape, ShapeHash, Vec3};
use rapier3d::prelude::SharedShape;

use crate::shapes;

/// The cost of one shape element in the cache's byte count (parry's structures hold a
/// vertex or triangle with its bounding-volume tree in about this much).
pub const BYTES_PER_ELEMENT: usize = 64;

/// Default byte budget of a peer's (or a worker's) cache.
pub const DEFAULT_SHAPE_CACHE_BYTES: usize = 64 << 20;

/// A checked, built shape.
#[derive(Debug)]
pub struct CachedShape {
    /// Built for rapier (cloning it shares it).
    pub built: SharedShape,
    /// Its boxes in its own frame (centre, half extents): one per part of a compound, one
    /// for anything else, for the contact-pair budget.
    pub local_boxes: Vec<(Vec3, Vec3)>,
    /// Its [`Shape::elements`].
    pub elements: usize,
    /// A triangle mesh or heightfield: a surface, never a dynamic body.
    pub surface: bool,
}

impl CachedShape {
    /// A checked shape, built (`what` names it in errors).
    pub fn build(shape: &Shape, what: &str) -> Result<CachedShape, p2c2r_protocol::TaskError> {
        shapes::check(shape, what)?;
        Ok(CachedShape {
            built: shapes::build(shape, what)?,
            local_boxes: shapes::local_boxes(shape),
            elements: shape.elements(),
            surface: matches!(shape, Shape::TriMesh { .. } | Shape::Heightfield { .. }),
        })
    }

    fn bytes(&self) -> usize {
        self.elements.saturating_mul(BYTES_PER_ELEMENT)
    }
}

/// Built shapes by content hash, least recently used forgotten first past a byte budget.
#[derive(Debug)]
pub struct ShapeCache {
    /// Each shape, its last use stamp and who put it in.
    entries: HashMap<ShapeHash, (Arc<CachedShape>, u64, Arc<str>)>,
    /// Bytes each owner's shapes hold.
    owners: HashMap<Arc<str>, usize>,
    /// Use stamps, oldest first.
    order: BTreeMap<u64, ShapeHash>,
    next_stamp: u64,
    bytes: usize,
    budget: usize,
    hits: u64,
    misses: u64,
}

impl Default for ShapeCache {
    fn default() -> Self {
        ShapeCache::new(DEFAULT_SHAPE_CACHE_BYTES)
    }
}

impl ShapeCache {
    /// An empty cache holding at most `budget` bytes of shapes.
    pub fn new(budget: usize) -> Self {
        ShapeCache {
            entries: HashMap::new(),
            owners: HashMap::new(),
            order: BTreeMap::new(),
            next_stamp: 0,
            bytes: 0,
            budget,
            hits: 0,
            misses: 0,
        }
    }

    /// The shape named `hash`, marked used; `None` (a miss) when the cache lacks it.
    pub fn get(&mut self, hash: &ShapeHash) -> Option<Arc<CachedShape>> {
        let stamp = self.next_stamp;
        let Some((shape, used, _)) = self.entries.get_mut(hash) else {
            self.misses += 1;
            return None;
        };
        self.hits += 1;
        self.order.remove(used);
        *used = stamp;
        self.order.insert(stamp, *hash);
        self.next_stamp += 1;
        Some(shape.clone())
    }

    /// Keeps `shape` under `hash` (which must be its [`ShapeHash::of`]), with no owner
    /// quota (one process's own cache: the plugin's local fallback, a request's).
    pub fn insert(&mut self, hash: ShapeHash, shape: Arc<CachedShape>) {
        self.insert_within(hash, shape, Arc::from(""), usize::MAX);
    }

    /// Keeps `shape` under `hash` for `owner`, whose shapes may hold at most a quarter of
    /// the budget: past it, the owner's own least recently used shapes go first; past the
    /// whole budget, anyone's. A shape larger than the owner's quarter is not kept.
    pub fn insert_for(&mut self, owner: &str, hash: ShapeHash, shape: Arc<CachedShape>) {
        let quota = self.budget / 4;
        self.insert_within(hash, shape, Arc::from(owner), quota);
    }

    fn insert_within(&mut self, hash: ShapeHash, shape: Arc<CachedShape>, owner: Arc<str>, quota: usize) {
        let bytes = shape.bytes();
        if self.entries.contains_key(&hash) || bytes > self.budget || bytes > quota {
            return;
        }
        while self.owners.get(&owner).copied().unwrap_or(0) + bytes > quota {
            let Some(oldest) = self.order.values().find(|h| self.entries[*h].2 == owner).copied() else { break };
            self.forget(&oldest);
        }
        while self.bytes + bytes > self.budget {
            let Some((_, &oldest)) = self.order.first_key_value() else { break };
            self.forget(&oldest);
        }
        self.bytes += bytes;
        *self.owners.entry(owner.clone()).or_default() += bytes;
        self.order.insert(self.next_stamp, hash);
        self.entries.insert(hash, (shape, self.next_stamp, owner));
        self.next_stamp += 1;
    }

    fn forget(&mut self, hash: &ShapeHash) {
        let Some((gone, stamp, owner)) = self.entries.remove(hash) else { return };
        self.order.remove(&stamp);
        self.bytes -= gone.bytes();
        if let Some(held) = self.owners.get_mut(&owner) {
            *held -= gone.bytes();
            if *held == 0 {
                self.owners.remove(&owner);
            }
        }
    }

    /// Takes every shape out (a request's own cache, moved into a store's once the
    /// request succeeded).
    pub fn drain(&mut self) -> Vec<(ShapeHash, Arc<CachedShape>)> {
        self.order.clear();
        self.owners.clear();
        self.bytes = 0;
        self.entries.drain().map(|(hash, (shape, _, _))| (hash, shape)).collect()
    }

    /// Whether it holds `hash` (without marking it used).
    pub fn contains(&self, hash: &ShapeHash) -> bool {
        self.entries.contains_key(hash)
    }

    /// Shapes held.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// Whether it holds none.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// Bytes held (as counted: elements × [`BYTES_PER_ELEMENT`]).
    pub fn bytes(&self) -> usize {
        self.bytes
    }

    /// Lookups that found their shape, and those that did not.
    pub fn hits_and_misses(&self) -> (u64, u64) {
        (self.hits, self.misses)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn mesh(n: u32, lift: f32) -> Shape {
        let vertices = (0..n).flat_map(|i| [[i as f32, lift, 0.0], [i as f32, lift, 1.0]]).collect();
        let indices =
            (0..n - 1).flat_map(|i| [[2 * i, 2 * i + 1, 2 * i + 2], [2 * i + 1, 2 * i + 3, 2 * i + 2]]).collect();
        Shape::TriMesh { vertices, indices }
    }

    #[test]
    fn the_least_recently_used_shape_goes_first_and_lookups_are_counted() {
        let shapes: Vec<Shape> = (0..3).map(|i| mesh(100, i as f32)).collect();
        let one = shapes[0].elements() * BYTES_PER_ELEMENT;
        let mut cache = ShapeCache::new(2 * one);
        let hashes: Vec<ShapeHash> = shapes.iter().map(ShapeHash::of).collect();
        assert_ne!(hashes[0], hashes[1], "different content, different names");
        for (shape, hash) in shapes.iter().zip(&hashes).take(2) {
            cache.insert(*hash, Arc::new(CachedShape::build(shape, "mesh").unwrap()));
        }
        assert!(cache.get(&hashes[0]).is_some(), "used: the second is now the oldest");
        cache.insert(hashes[2], Arc::new(CachedShape::build(&shapes[2], "mesh").unwrap()));
        assert!(cache.contains(&hashes[0]) && cache.contains(&hashes[2]) && !cache.contains(&hashes[1]));
        assert_eq!((cache.len(), cache.bytes()), (2, 2 * one));
        assert!(cache.get(&hashes[1]).is_none());
        assert_eq!(cache.hits_and_misses(), (1, 1));
        // One owner's shapes hold at most a quarter: its own oldest go first.
        let mut shared = ShapeCache::new(8 * one);
        let many: Vec<Shape> = (0..4).map(|i| mesh(100, 10.0 + i as f32)).collect();
        shared.insert_for("honest", hashes[0], Arc::new(CachedShape::build(&shapes[0], "mesh").unwrap()));
        for shape in &many {
            shared.insert_for("flooder", ShapeHash::of(shape), Arc::new(CachedShape::build(shape, "mesh").unwrap()));
        }
        assert!(shared.contains(&hashes[0]), "the flooder cannot push the honest gamer's shape out");
        assert_eq!(shared.len(), 3, "the honest shape and the flooder's two newest");
        assert!(shared.contains(&ShapeHash::of(&many[3])) && !shared.contains(&ShapeHash::of(&many[0])));
        // Larger than the whole budget: not kept, nothing else forgotten.
        let huge = mesh(1000, 9.0);
        cache.insert(ShapeHash::of(&huge), Arc::new(CachedShape::build(&huge, "huge").unwrap()));
        assert_eq!(cache.len(), 2);
    }
}
