//! Large shapes sent once: which of the game's large colliders the peer holds, so that
//! later snapshots name them ([`Shape::Cached`]) instead of sending them again.
//!
//! The rule: a large shape (see [`Shape::is_cacheable`]) goes itself the first time the
//! session sends it, and by name afterwards (not in a replicated or audited session: a
//! replica that joins by replaying the session's log must find every shape in it). A peer that lacks a name (a failover to a
//! peer that never saw the level) answers `missing_shape` with a resync; the plugin then
//! forgets what it sent ([`ShapeNames::forget_sent`]) and the resync's snapshot carries
//! the shapes themselves again. The local fallback resolves names from the colliders the
//! game holds ([`ShapeNames::resolve`]), so it never misses one.

use std::collections::{HashMap, HashSet};

use bevy::prelude::{Entity, Resource};
use p2c2r_protocol::physics::{PhysicsStepRequest, Shape, ShapeHash};

use crate::body::Collider;

/// The large shapes of the game's bodies and the names the peer holds (plugin-internal).
#[derive(Resource, Default, Debug)]
pub(crate) struct ShapeNames {
    /// Each large shape in use, with how many bodies use it.
    shapes: HashMap<ShapeHash, (Shape, usize)>,
    by_entity: HashMap<Entity, ShapeHash>,
    /// Names whose shape went to the peer itself since the last `missing_shape`.
    sent: HashSet<ShapeHash>,
}

impl ShapeNames {
    /// A body (re)registered with this collider.
    pub fn register(&mut self, entity: Entity, collider: &Collider) {
        self.unregister(entity);
        if let Some(Shape::Cached { sha256, .. }) = collider.cached() {
            self.shapes.entry(*sha256).or_insert_with(|| (collider.shape().clone(), 0)).1 += 1;
            self.by_entity.insert(entity, *sha256);
        }
    }

    /// A body is gone.
    pub fn unregister(&mut self, entity: Entity) {
        let Some(hash) = self.by_entity.remove(&entity) else { return };
        if let Some((_, users)) = self.shapes.get_mut(&hash) {
            *users -= 1;
            if *users == 0 {
                self.shapes.remove(&hash);
            }
        }
    }

    /// Names, in `request`, the large shapes sent before it; marks the others sent (every
    /// body of the request that uses one gets the shape itself: the peer keeps it only
    /// once the request is checked).
    pub fn name(&mut self, request: &mut PhysicsStepRequest) {
        let mut sending = Vec::new();
        for desc in &mut request.add {
            if !desc.shape.is_cacheable() {
                continue;
            }
            let hash = ShapeHash::of(&desc.shape);
            if self.sent.contains(&hash) {
                desc.shape = Shape::Cached { sha256: hash, elements: desc.shape.elements() as u64 };
            } else {
                sending.push(hash);
            }
        }
        self.sent.extend(sending);
    }

    /// The peer lacked a name: the next snapshot sends every large shape itself.
    pub fn forget_sent(&mut self) {
        self.sent.clear();
    }

    /// `request` with every name `known` does not hold replaced by the shape itself, when
    /// there is one to replace (for the local world, whose cache may lack a name).
    pub fn resolve(
        &self,
        request: &PhysicsStepRequest,
        known: impl Fn(&ShapeHash) -> bool,
    ) -> Option<PhysicsStepRequest> {
        let lacking = |s: &Shape| matches!(s, Shape::Cached { sha256, .. } if !known(sha256));
        if !request.add.iter().any(|d| lacking(&d.shape)) {
            return None;
        }
        let mut resolved = request.clone();
        for desc in &mut resolved.add {
            if let Shape::Cached { sha256, .. } = desc.shape
                && !known(&sha256)
                && let Some((shape, _)) = self.shapes.get(&sha256)
            {
                desc.shape = shape.clone();
            }
        }
        Some(resolved)
    }
}

#[cfg(test)]
mod tests {
    use p2c2r_protocol::physics::BodyDesc;

    use super::*;

    fn mesh() -> Collider {
        let vertices = (0..200).map(|i| bevy::math::Vec3::new(i as f32, 0.0, (i % 2) as f32)).collect();
        Collider::trimesh(vertices, (0..198).map(|i| [i, i + 1, i + 2]).collect())
    }

    #[test]
    fn a_large_shape_goes_once_then_by_name_until_the_peer_lacks_it() {
        let mut names = ShapeNames::default();
        let floor = mesh();
        let entity = Entity::from_raw_u32(7).unwrap();
        names.register(entity, &floor);
        let request = |id| PhysicsStepRequest {
            add: vec![
                BodyDesc::new(id, floor.shape().clone(), [0.0; 3]),
                BodyDesc::new(id + 1, Shape::Sphere { radius: 1.0 }, [0.0; 3]),
            ],
            ..Default::default()
        };
        let mut first = request(1);
        // Two bodies of the first request share the shape: both carry it.
        first.add.push(BodyDesc::new(10, floor.shape().clone(), [5.0, 0.0, 0.0]));
        names.name(&mut first);
        assert_eq!(first.add[0].shape, *floor.shape(), "the first time, the shape itself");
        assert_eq!(first.add[2].shape, *floor.shape(), "for every body that uses it");
        let mut second = request(3);
        names.name(&mut second);
        assert_eq!(&second.add[0].shape, floor.cached().unwrap(), "then its name");
        assert_eq!(second.add[1].shape, Shape::Sphere { radius: 1.0 }, "small shapes always themselves");
        // The local world lacking the name gets the shape back.
        let local = names.resolve(&second, |_| false).expect("resolved");
        assert_eq!(local.add[0].shape, *floor.shape());
        assert!(names.resolve(&second, |_| true).is_none(), "nothing to resolve when the cache holds it");
        names.forget_sent();
        let mut third = request(5);
        names.name(&mut third);
        assert_eq!(third.add[0].shape, *floor.shape(), "after missing_shape, the shape itself again");
        names.unregister(entity);
        assert!(names.shapes.is_empty());
    }
}
