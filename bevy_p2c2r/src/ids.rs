//! The one map between entities and the ids the wire uses, for bodies and agents.

use std::collections::HashSet;

// Bevy's maps (foldhash) rather than std's (SipHash): the Apply stage looks up every
// reported body each tick (4,096 lookups a frame in the main-thread benchmark), and ids
// are keys this side handed out (a peer cannot choose what the table holds).
use bevy::platform::collections::HashMap;
use bevy::prelude::{Entity, Resource};
use p2c2r_protocol::ai::AgentId;
use p2c2r_protocol::physics::{BodyId, JointDesc, JointId};

/// Entities ↔ wire ids in both directions, with the next id to hand out. Ids are never
/// reused within a session, so a late result can never be applied to a newer entity.
#[derive(Debug)]
pub(crate) struct IdMap<Id> {
    by_id: HashMap<Id, Entity>,
    by_entity: HashMap<Entity, Id>,
    next: Id,
}

impl<Id: Copy + Eq + std::hash::Hash + From<u8> + std::ops::AddAssign> IdMap<Id> {
    fn new() -> Self {
        IdMap { by_id: HashMap::default(), by_entity: HashMap::default(), next: Id::from(1) }
    }

    /// Gives `entity` a fresh id (forgetting the one it had). Returns the new id and the
    /// old one.
    pub fn assign(&mut self, entity: Entity) -> (Id, Option<Id>) {
        let old = self.remove_entity(entity);
        let id = self.next;
        self.next += Id::from(1);
        self.by_id.insert(id, entity);
        self.by_entity.insert(entity, id);
        (id, old)
    }

    /// Forgets `entity`; returns its id.
    pub fn remove_entity(&mut self, entity: Entity) -> Option<Id> {
        let id = self.by_entity.remove(&entity)?;
        self.by_id.remove(&id);
        Some(id)
    }

    /// Forgets `id`; returns its entity.
    pub fn remove_id(&mut self, id: Id) -> Option<Entity> {
        let entity = self.by_id.remove(&id)?;
        self.by_entity.remove(&entity);
        Some(entity)
    }

    pub fn entity(&self, id: Id) -> Option<Entity> {
        self.by_id.get(&id).copied()
    }

    pub fn id(&self, entity: Entity) -> Option<Id> {
        self.by_entity.get(&entity).copied()
    }

    pub fn contains_entity(&self, entity: Entity) -> bool {
        self.by_entity.contains_key(&entity)
    }

    pub fn len(&self) -> usize {
        self.by_id.len()
    }
}

/// Which entity each body and agent id stands for, and the removals and departures still
/// to report (plugin-internal).
#[derive(Resource, Debug)]
pub(crate) struct EntityIds {
    pub bodies: IdMap<BodyId>,
    pub agents: IdMap<AgentId>,
    /// Entities whose `Collider` was removed since the last tick.
    pub removed_bodies: Vec<Entity>,
    /// Entities whose `OffloadedAgent` was removed since the last tick.
    pub removed_agents: Vec<Entity>,
    /// Body ids a re-registered body gave up, to remove from the world this tick.
    pub replaced_bodies: Vec<BodyId>,
    /// Bodies a world removed because they left its bounds, to report.
    pub left_world: Vec<(Entity, BodyId, u64)>,
    /// Dynamic agents being steered (to stop them once when they arrive).
    pub agents_moving: HashSet<Entity>,
    /// The entities of body ids given up lately (removed, re-created, left the world), so
    /// that events a world reports about them afterwards still name them; the oldest of
    /// [`MAX_DEPARTED`] are forgotten.
    departed: HashMap<BodyId, Entity>,
    departed_order: std::collections::VecDeque<BodyId>,
    /// The joints ([`crate::ImpulseJoint`]) by the entity that holds them.
    pub joints: IdMap<JointId>,
    /// Each joint as last sent (what a snapshot carries again).
    pub joint_descs: std::collections::BTreeMap<JointId, JointDesc>,
    /// Entities whose `ImpulseJoint` was removed since the last tick.
    pub removed_joints: Vec<Entity>,
    /// Entities whose `ImpulseJoint` a world would refuse (checked again when it changes).
    pub refused_joints: HashSet<Entity>,
}

/// How many given-up body ids [`EntityIds`] remembers the entity of.
pub(crate) const MAX_DEPARTED: usize = 65_536;

impl EntityIds {
    /// Remembers the entity of a body id given up.
    pub fn depart(&mut self, id: BodyId, entity: Entity) {
        if self.departed.insert(id, entity).is_none() {
            self.departed_order.push_back(id);
        }
        while self.departed_order.len() > MAX_DEPARTED {
            if let Some(oldest) = self.departed_order.pop_front() {
                self.departed.remove(&oldest);
            }
        }
    }

    /// The entity a body id stands (or stood, lately) for.
    pub fn body_entity(&self, id: BodyId) -> Option<Entity> {
        self.bodies.entity(id).or_else(|| self.departed.get(&id).copied())
    }
}

impl Default for EntityIds {
    fn default() -> Self {
        EntityIds {
            bodies: IdMap::new(),
            agents: IdMap::new(),
            removed_bodies: Vec::new(),
            removed_agents: Vec::new(),
            replaced_bodies: Vec::new(),
            left_world: Vec::new(),
            agents_moving: HashSet::new(),
            departed: HashMap::default(),
            departed_order: std::collections::VecDeque::new(),
            joints: IdMap::new(),
            joint_descs: std::collections::BTreeMap::new(),
            removed_joints: Vec::new(),
            refused_joints: HashSet::new(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_map_both_ways_and_are_never_reused() {
        let mut ids: IdMap<BodyId> = IdMap::new();
        let (a, b) = (Entity::from_raw_u32(1).unwrap(), Entity::from_raw_u32(2).unwrap());
        assert_eq!(ids.assign(a), (1, None));
        assert_eq!(ids.assign(b), (2, None));
        assert_eq!(ids.assign(a), (3, Some(1)), "re-registering gives a new id");
        assert_eq!((ids.entity(3), ids.id(a), ids.entity(1)), (Some(a), Some(3), None));
        assert_eq!(ids.remove_id(2), Some(b));
        assert!(!ids.contains_entity(b));
        assert_eq!(ids.len(), 1);
    }
}
